"""What the cascade buys: the SLM alone, the SLM escalating its low-confidence documents
to a frontier model, and the frontier model for everything, on the same documents.

The escalation policy (temperature and threshold) is fitted on the model's held-out
split, never on the evaluation data, for the target given (``--max-escalation`` or
``--kept-accuracy``), exactly as ``shiftdown calibrate`` and ``shiftdown policy`` do.

The frontier is a stand-in: the OpenAI-compatible server of ``bench/scripted_server.py``
on 127.0.0.1, called through the project's own ``FrontierClient`` (production's prompt,
response format and token accounting), concurrently. It answers after ``--delay-ms``
with the reference label (the 100 % stand-in) or, for the 85 % stand-in, with a fixed
wrong label on a seeded 15 % of the documents (the same documents on every call). Its
``usage`` holds the tokens of the real request (every message's content) and of the
answer, counted with the SmolLM2 tokenizer, so costs are recorded token counts times
list prices. Its errors fall on random documents; a real frontier model errs on hard
documents, which are also the ones the SLM escalates, so the 85 % lines are an
optimistic bound.

Three lines per stand-in:

1. slm_only      the SLM's label for every document; no frontier calls;
2. cascade       documents whose calibrated confidence is below the policy's threshold
                 (per label with ``--per-label``) take the frontier's label; a
                 document's latency is its SLM latency plus, if escalated, its frontier
                 call's latency; its cost is that call's tokens at list prices;
3. all_frontier  every document goes to the frontier; latency is the call's.

The frontier is called once per document and stand-in (the all_frontier pass); the
cascade line reuses those answers, latencies and tokens for the documents it escalates
instead of calling twice. SLM latencies are measured first, alone on the machine.

After each table comes the whole trade-off on the evaluation data
(``models.policy.curve``, thresholds chosen on these same documents per escalation rate,
the frontier counted right at the stand-in's accuracy).

    python -m bench.cascade [--limit 200] [--per-label] [--json] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import SecretStr

from bench.batch_api import BatchApi
from bench.queries import TEST_CSV
from bench.scripted_server import ScriptedServer
from bench.stack import ROOT
from models.calibration import fit_temperature
from models.candidates import gold_ranks, recall_curve
from models.classifier import Classifier, ModelSpec, RuntimeOptions
from models.policy import (
    KEPT_ACCURACY,
    MAX_ESCALATION,
    Economics,
    Policy,
    Target,
    curve,
    fit_policy,
    outcome,
)
from models.ranking import compare_signals
from models.registry import load_model_dir
from models.scores import Scores, score
from models.teacher import read_labelled
from shiftdown.costs import DEFAULT_PRICES, cost_usd
from shiftdown.manifest import ModelManifest
from shiftdown.prompts import narrowed
from shiftdown.settings import Settings, get_settings
from shiftdown.taxonomy import Taxonomy
from workers.frontier_client import OK, FrontierClient, FrontierResult

STAND_INS = (1.0, 0.85)
PRICED = ("gpt-4o", "gpt-4")
SEED = 0
MAX_TEXT_CHARS = 20_000

Examples = list[tuple[str, str]]


# ---------------------------------------------------------------------------- data


def load_examples(
    path: Path, text_column: str, label_column: str, taxonomy: Taxonomy, limit: int | None
) -> Examples:
    """The labelled examples of ``path`` (the first ``limit`` when given)."""
    examples = read_labelled(path, text_column, label_column, taxonomy)[:limit]
    if not examples:
        sys.exit(f"{path} has no labelled examples")
    return examples


def heldout_file(manifest: ModelManifest, override: str | None) -> Path:
    """The held-out split: ``--heldout`` or the one the model directory records."""
    if override:
        return Path(override)
    recorded = manifest.heldout.path if manifest.heldout else None
    if not recorded:
        sys.exit("the model records no held-out split: pass --heldout FILE")
    return Path(recorded)


def load_classifier(
    model: Path, labels: tuple[str, ...], options: RuntimeOptions
) -> tuple[Classifier, Path]:
    """The SLM as the worker loads it, and the GGUF whose vocabulary it uses."""
    gguf, adapter, manifest = load_model_dir(model)
    trained = manifest.labels
    if trained is not None and tuple(trained) != labels:
        sys.exit(f"{model} was trained for another label list than the taxonomy's")
    spec = ModelSpec(str(gguf), labels, str(adapter) if adapter else None, manifest)
    return Classifier(spec, options), gguf


def score_with_progress(clf: Classifier, examples: Examples, name: str) -> Scores:
    """``models.scores.score`` with a progress line on stderr every 100 documents."""
    done = 0
    start = time.perf_counter()

    def advance(n: int) -> None:
        nonlocal done
        before, done = done, done + n
        if done // 100 > before // 100 or done == len(examples):
            rate = done / (time.perf_counter() - start)
            print(f"  {name}: {done}/{len(examples)} ({rate:.1f} docs/s)", file=sys.stderr)

    return score(clf, examples, advance)


# -------------------------------------------------------------------------- policy


def fit_on_heldout(scores: Scores, target: Target, per_label: bool, target_recall: float) -> Policy:
    """Temperature, then thresholds, both from the held-out scores.

    For escalation-rate and kept-accuracy targets the thresholds do not depend on the
    price of an escalation, so none is needed before the frontier has been measured.
    """
    temperature = fit_temperature(scores.logits, scores.gold)
    conf = scores.confidence(temperature)
    policy = fit_policy(
        conf,
        scores.predicted,
        scores.correct,
        target,
        Economics(usd_per_escalation=0.0),
        per_label=per_label,
        temperature=temperature,
    )
    if target_recall:
        policy.fit_candidates(scores.logits, scores.gold, scores.predicted, conf, target_recall)
    return policy


# ------------------------------------------------------------------------ stand-in


class TokenCounter:
    """Token counts by the SmolLM2 tokenizer (vocabulary only, no weights)."""

    def __init__(self, gguf: Path) -> None:
        from llama_cpp import Llama

        self._vocab = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
        # llama.cpp objects are not documented as thread-safe, and the server is threaded.
        self._lock = threading.Lock()
        self._cache: dict[str, int] = {}

    def count(self, text: str) -> int:
        """Tokens of ``text`` (no BOS, special tokens as plain text)."""
        with self._lock:
            # The system prompt is the same in every request; count it once.
            if text not in self._cache:
                tokens = self._vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)
                if len(self._cache) < 64:
                    self._cache[text] = len(tokens)
                return len(tokens)
            return self._cache[text]


def stand_in_answers(
    examples: Examples, labels: Sequence[str], accuracy: float, seed: int = SEED
) -> dict[str, str]:
    """The label the stand-in gives each text: the reference one, except a fixed wrong
    label on exactly ``round((1 - accuracy) * n)`` texts chosen with a seeded RNG."""
    rng = random.Random(seed)
    answers = {text[:MAX_TEXT_CHARS]: label for text, label in examples}
    texts = list(answers)
    for text in rng.sample(texts, round((1.0 - accuracy) * len(texts))):
        answers[text] = rng.choice([lbl for lbl in labels if lbl != answers[text]])
    return answers


# ------------------------------------------------------------------------ frontier


@dataclass(frozen=True)
class FrontierPass:
    """One frontier call per document, in document order."""

    results: list[FrontierResult]
    wall_s: float

    @property
    def labels(self) -> list[str | None]:
        return [r.label if r.status == OK else None for r in self.results]

    @property
    def latency_ms(self) -> npt.NDArray[np.float64]:
        return np.asarray([r.latency_ms for r in self.results], dtype=np.float64)

    def usd(self, model: str) -> npt.NDArray[np.float64]:
        """Each call's cost at ``model``'s list price."""
        return np.asarray(
            [
                cost_usd(model, r.prompt_tokens, r.completion_tokens, DEFAULT_PRICES) or 0.0
                for r in self.results
            ],
            dtype=np.float64,
        )

    @property
    def failures(self) -> int:
        return sum(r.status != OK for r in self.results)


def frontier_settings(base_url: str) -> Settings:
    """Production's frontier settings, pointed at the stand-in and priced as gpt-4o."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]  # a developer's .env must not change it
        openai_base_url=base_url,
        openai_api_key=SecretStr("sk-standin"),
        frontier_model="gpt-4o",
        frontier_price_model=None,
        frontier_response_format="auto",
        frontier_client_retries=0,
        frontier_timeout_s=30,
        max_text_chars=MAX_TEXT_CHARS,
    )


def frontier_pass(
    base_url: str, texts: Sequence[str], taxonomy: Taxonomy, concurrency: int
) -> FrontierPass:
    """Every text through ``FrontierClient``, ``concurrency`` calls in flight."""
    client = FrontierClient(frontier_settings(base_url))
    client.classify(texts[0], taxonomy)  # connection set-up is not a document's latency
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda t: client.classify(t, taxonomy), texts))
    return FrontierPass(results, time.perf_counter() - start)


def narrowed_pass(
    base_url: str,
    texts: Sequence[str],
    taxonomy: Taxonomy,
    candidates: Sequence[list[str]],
    concurrency: int,
) -> list[list[FrontierResult]]:
    """Each text's calls when its request offers only ``candidates`` (and "none of
    these"): one call, or two when the first declines and the whole taxonomy follows."""
    client = FrontierClient(frontier_settings(base_url))

    def calls(job: tuple[str, list[str]]) -> list[FrontierResult]:
        text, offered = job
        first = client.classify(text, taxonomy, offered or None)
        return [first, client.classify(text, taxonomy)] if first.declined else [first]

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(calls, zip(texts, candidates, strict=True)))


def batch_pass(
    base_url: str, texts: Sequence[str], taxonomy: Taxonomy, candidates: Sequence[list[str]]
) -> tuple[list[list[FrontierResult]], float]:
    """Each text's Batch API lines, as batch mode sends them: one batch of narrowed
    requests, then one batch of whole-taxonomy requests for the lines that declined;
    and the wall time of both batches."""
    client = FrontierClient(frontier_settings(base_url))
    started = time.perf_counter()

    def one_batch(jobs: list[tuple[int, list[str] | None]]) -> dict[int, FrontierResult]:
        lines = []
        for i, offered in jobs:
            shown = narrowed(taxonomy, offered) if offered else taxonomy
            body = client.request_body(texts[i], shown)
            lines.append(
                {"custom_id": str(i), "method": "POST", "url": "/v1/chat/completions", "body": body}
            )
        data = "".join(json.dumps(x) + "\n" for x in lines).encode()
        uploaded = client.api.files.create(file=("cascade.jsonl", data), purpose="batch")
        remote = client.api.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        while remote.status not in ("completed", "expired", "failed", "cancelled"):
            time.sleep(0.2)
            remote = client.api.batches.retrieve(remote.id)
        out = client.api.files.content(remote.output_file_id).text if remote.output_file_id else ""
        answered = {}
        for raw in out.splitlines():
            item = json.loads(raw)
            answered[int(item["custom_id"])] = item["response"]
        results = {}
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        for i, offered in jobs:
            response = answered.get(i) or {}
            results[i] = client.batch_result(
                int(response.get("status_code") or 0),
                response.get("body"),
                None if response else f"batch {remote.status}: no answer",
                taxonomy,
                offered,
                elapsed_ms,
            )
        return results

    first = one_batch([(i, offered or None) for i, offered in enumerate(candidates)])
    again = one_batch([(i, None) for i, r in first.items() if r.declined])
    calls = [[first[i]] + ([again[i]] if i in again else []) for i in range(len(texts))]
    return calls, time.perf_counter() - started


def narrowed_line(
    slm: Scores,
    escalate: npt.NDArray[np.bool_],
    narrowed: list[list[FrontierResult]],
    batch: bool = False,
) -> dict[str, float]:
    """The cascade with narrowed requests: ``narrowed`` holds the calls of each
    escalated document, in document order."""
    final: list[str | None] = list(slm.predicted)
    latency = slm.latency_ms.copy()
    usd = {m: 0.0 for m in PRICED}
    for i, calls in zip(np.flatnonzero(escalate), narrowed, strict=True):
        last = calls[-1]
        final[i] = last.label if last.status == OK else None
        latency[i] += sum(c.latency_ms for c in calls)
        for m in PRICED:
            usd[m] += sum(
                cost_usd(
                    m, c.prompt_tokens, c.completion_tokens, DEFAULT_PRICES, c.cached_tokens, batch
                )
                or 0.0
                for c in calls
            )
    return line(final, slm.gold_labels, escalate, latency, usd)


def top_labels(probs: npt.NDArray[np.float64], labels: Sequence[str], k: int) -> list[list[str]]:
    """Each row's ``k`` most probable labels, most probable first."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[labels[j] for j in row] for row in order]


# --------------------------------------------------------------------------- lines


def line(
    final: Sequence[str | None],
    gold: Sequence[str],
    escalated: npt.NDArray[np.bool_],
    latency_ms: npt.NDArray[np.float64],
    usd: dict[str, float],
) -> dict[str, float]:
    """One line's figures; ``usd`` is the total frontier spend by priced model."""
    n = len(gold)
    p95 = float(np.percentile(latency_ms, 95))
    return {
        "accuracy": round(sum(f == g for f, g in zip(final, gold, strict=True)) / n, 4),
        "escalation_rate": round(float(escalated.mean()), 4),
        "usd_per_1k": round(1000.0 * usd["gpt-4o"] / n, 4),
        "usd_per_1k_gpt4": round(1000.0 * usd["gpt-4"] / n, 4),
        "mean_latency_ms": round(float(latency_ms.mean()), 1),
        "p95_latency_ms": round(p95, 1),
    }


def three_lines(
    slm: Scores, escalate: npt.NDArray[np.bool_], frontier: FrontierPass
) -> dict[str, dict[str, float]]:
    """slm_only, cascade and all_frontier on the same documents."""
    n = len(slm.gold)
    gold, predicted = slm.gold_labels, slm.predicted
    answers = frontier.labels
    cost = {m: frontier.usd(m) for m in PRICED}
    none, every = np.zeros(n, dtype=bool), np.ones(n, dtype=bool)
    cascade = [a if e else p for a, e, p in zip(answers, escalate, predicted, strict=True)]
    return {
        "slm_only": line(predicted, gold, none, slm.latency_ms, {m: 0.0 for m in PRICED}),
        "cascade": line(
            cascade,
            gold,
            escalate,
            slm.latency_ms + np.where(escalate, frontier.latency_ms, 0.0),
            {m: float(c[escalate].sum()) for m, c in cost.items()},
        ),
        "all_frontier": line(
            answers, gold, every, frontier.latency_ms, {m: float(c.sum()) for m, c in cost.items()}
        ),
    }


def ratios(lines: dict[str, dict[str, float]], name: str = "cascade") -> dict[str, float | None]:
    """A cascade line (``name``) over all-frontier: cost and latency."""
    cascade, frontier = lines[name], lines["all_frontier"]
    keys = ("usd_per_1k", "usd_per_1k_gpt4", "mean_latency_ms", "p95_latency_ms")
    return {k: round(cascade[k] / frontier[k], 4) if frontier[k] else None for k in keys}


def trade_off(
    conf: npt.NDArray[np.float64], correct: npt.NDArray[np.bool_], usd: dict[str, float], p: float
) -> list[dict[str, Any]]:
    """``models.policy.curve`` priced at the measured mean cost per call of each model."""
    priced = {m: curve(conf, correct, Economics(usd[m], p)) for m in PRICED}
    points = []
    for (threshold, o), (_, o4) in zip(priced["gpt-4o"], priced["gpt-4"], strict=True):
        points.append(
            {
                "threshold": round(threshold, 6),
                **o.as_dict(),
                "usd_per_1k_gpt4": round(o4.usd_per_1k, 6),
            }
        )
    return points


# --------------------------------------------------------------------------- print


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def print_lines(name: str, lines: dict[str, dict[str, float]], frontier: FrontierPass) -> None:
    print(
        f"\nstand-in {name}  (all_frontier pass: {len(frontier.results)} calls in "
        f"{frontier.wall_s:.1f} s, {frontier.failures} failed)"
    )
    print(
        f"{'line':<18}{'accuracy':>10}{'escalated':>11}{'$/1k 4o':>10}{'$/1k gpt-4':>12}"
        f"{'mean ms':>10}{'p95 ms':>10}"
    )
    for key, v in lines.items():
        print(
            f"{key:<18}{pct(v['accuracy']):>10}{pct(v['escalation_rate']):>11}"
            f"{v['usd_per_1k']:>10.4f}{v['usd_per_1k_gpt4']:>12.4f}"
            f"{v['mean_latency_ms']:>10.1f}{v['p95_latency_ms']:>10.1f}"
        )
    for cascade in ("cascade", "cascade_narrowed", "cascade_batch"):
        if cascade not in lines:
            continue
        r = ratios(lines, cascade)
        print(
            f"{cascade} / all_frontier: cost {r['usd_per_1k']} (gpt-4o), {r['usd_per_1k_gpt4']} "
            f"(gpt-4); mean latency {r['mean_latency_ms']}; p95 latency {r['p95_latency_ms']}"
        )


def print_ranking(report: dict[str, dict[str, dict[str, float]]]) -> None:
    print("\nranking escalations (2-fold: temperature fitted on one half, judged on the other)")
    print(f"{'signal':<18}{'data':>9}{'AURC':>9}{'kept acc @90 %':>16}")
    for data, signals in report.items():
        for name, f in signals.items():
            print(f"{name:<18}{data:>9}{f['aurc']:>9.4f}{pct(f['kept_accuracy_at_90']):>16}")


def print_candidates(report: dict[str, Any]) -> None:
    rule, curves = report["rule"], report["recall_at_k"]
    if rule:
        print(
            f"\nnarrowing: the SLM's top {rule['k']} labels and 'none of these'; recall "
            f"{pct(rule['recall'])} for a target of {pct(rule['target_recall'])} on "
            f"{rule['documents']} held-out documents ({rule['chosen_on']})"
        )
    print("top-k recall: share of documents whose true label is among the SLM's top k")
    print(f"{'k':>4}" + "".join(f"{name:>20}" for name in curves))
    for k in range(len(next(iter(curves.values())))):
        print(f"{k + 1:>4}" + "".join(f"{pct(c[k]):>20}" for c in curves.values()))


def print_curve(name: str, points: list[dict[str, Any]]) -> None:
    print(f"\ntrade-off on the evaluation data, stand-in {name} (thresholds set on these data)")
    print(
        f"{'escalated':>10}{'threshold':>11}{'kept acc':>10}{'overall':>10}"
        f"{'$/1k 4o':>10}{'$/1k gpt-4':>12}"
    )
    for p in points:
        print(
            f"{pct(p['escalation_rate']):>10}{p['threshold']:>11.4f}{pct(p['kept_accuracy']):>10}"
            f"{pct(p['overall_accuracy']):>10}{p['usd_per_1k']:>10.4f}"
            f"{p['usd_per_1k_gpt4']:>12.4f}"
        )


def print_header(report: dict[str, Any]) -> None:
    s, pol = report["setup"], report["policy"]
    prices = ", ".join(
        f"{m} ${DEFAULT_PRICES[m].input_per_1m:g}/${DEFAULT_PRICES[m].output_per_1m:g}"
        for m in PRICED
    )
    print(
        f"Frontier: an OpenAI-compatible stand-in on loopback (127.0.0.1), called through "
        f"shiftdown's FrontierClient as gpt-4o, {s['concurrency']} calls in flight; it answers "
        f"the reference label (100 %) or a wrong one on a seeded 15 % of documents "
        f"(85 %) after {s['delay_ms']:g} ms. Token counts are those of the real prompt and "
        f"answer by the SmolLM2 tokenizer (mean {s['mean_prompt_tokens']:.1f} prompt + "
        f"{s['mean_completion_tokens']:.1f} completion tokens per call); list prices per 1M "
        f"tokens in/out: {prices}."
    )
    rate = s["slm_docs_per_s"]
    print(
        f"SLM: {s['model']}, {s['threads']} llama.cpp threads, scored {rate['heldout']} docs/s "
        f"(held-out) and {rate['eval']} docs/s (eval); machine: {s['cpus']} CPUs, "
        f"{s['platform']}, Python {s['python']}, 1-min load average "
        f"{s['load_average_1m_end']} at the end."
    )
    print(
        f"Data: {s['data']} ({s['documents']} documents); policy fitted on {s['heldout']} "
        f"({s['heldout_documents']} held-out documents)."
    )
    held = pol["heldout_outcome"]
    per_label = f", {len(pol['per_label'])} per-label thresholds" if pol["per_label"] else ""
    print(
        f"Policy: target {pol['target_text']}; temperature {pol['temperature']}; threshold "
        f"{pol['threshold']:.4f}{per_label}; on held-out: escalation "
        f"{pct(held['escalation_rate'])}, kept accuracy {pct(held['kept_accuracy'])}, "
        f"SLM accuracy {pct(pol['heldout_slm_accuracy'])}."
    )


# ---------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(ROOT / "demo" / "banking77-lora"))
    parser.add_argument("--data", default=str(TEST_CSV))
    parser.add_argument("--heldout", default=None, help="default: the model's held-out split")
    parser.add_argument("--taxonomy", default=str(ROOT / "demo" / "banking77" / "categories.json"))
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="category")
    parser.add_argument("--limit", type=int, default=None, help="first N rows of --data")
    parser.add_argument("--delay-ms", type=float, default=900.0)
    parser.add_argument("--concurrency", type=int, default=32)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--max-escalation", type=float, default=None, help="default 0.10")
    target.add_argument("--kept-accuracy", type=float, default=None)
    parser.add_argument("--per-label", action="store_true")
    parser.add_argument(
        "--candidate-recall",
        type=float,
        default=0.995,
        help="target recall of the labels a narrowed request offers (0: no narrowing)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--gpu-layers", type=int, default=0, help="-1: offload every layer")
    parser.add_argument(
        "--parallel", type=int, default=1, help="documents decoded together (GPU: 64 or more)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--json-out", default=None, help="also write the JSON to this file")
    return parser.parse_args()


def chosen_target(args: argparse.Namespace) -> Target:
    if args.kept_accuracy is not None:
        return Target(KEPT_ACCURACY, args.kept_accuracy)
    return Target(MAX_ESCALATION, 0.10 if args.max_escalation is None else args.max_escalation)


@dataclass(frozen=True)
class StandInRun:
    """One stand-in's frontier pass and the three lines built from it."""

    name: str
    frontier: FrontierPass
    lines: dict[str, dict[str, float]]
    curve: list[dict[str, Any]]
    usd_per_call: dict[str, float]
    accuracy: float


def measure_stand_in(
    accuracy: float,
    data: Examples,
    taxonomy: Taxonomy,
    counter: TokenCounter,
    slm: Scores,
    conf: npt.NDArray[np.float64],
    escalate: npt.NDArray[np.bool_],
    candidates: list[list[str]] | None,
    args: argparse.Namespace,
) -> StandInRun:
    """Serve a stand-in of this accuracy, call it for every document, derive the lines;
    with ``candidates`` (each escalated document's offered labels), call it again for
    the escalated documents with narrowed requests."""
    name = f"{round(100 * accuracy)}"
    answers = stand_in_answers(data, taxonomy.names, accuracy)
    server = ScriptedServer(
        label_for=lambda text: answers.get(text, taxonomy.names[0]),
        count_tokens=counter.count,
        delay_s=args.delay_ms / 1000.0,
        keep_alive=True,
    )
    # Batch lines are answered when the batch is created: ready at the first poll.
    server.batch = BatchApi(answer=server.default_answer, polls_until_done=0)
    base_url = server.start().base_url
    texts = [t for t, _ in data]
    try:
        run = frontier_pass(base_url, texts, taxonomy, args.concurrency)
        escalated_texts = [texts[i] for i in np.flatnonzero(escalate)]
        offered = candidates if candidates is not None else [[] for _ in escalated_texts]
        narrowed_calls = narrowed_pass(
            base_url, escalated_texts, taxonomy, offered, args.concurrency
        )
        batch_calls, batch_wall_s = batch_pass(base_url, escalated_texts, taxonomy, offered)
    finally:
        server.stop()
    print(f"  stand-in {name} %: {len(data)} calls in {run.wall_s:.1f} s", file=sys.stderr)
    usd = {m: float(run.usd(m).mean()) for m in PRICED}
    right = [a == g for a, g in zip(run.labels, slm.gold_labels, strict=True)]
    lines = three_lines(slm, escalate, run)
    declined = sum(len(calls) > 1 for calls in narrowed_calls)
    print(
        f"  stand-in {name} %: narrowed {len(narrowed_calls)} escalations, {declined} declined; "
        f"batch mode: two batches in {batch_wall_s:.1f} s",
        file=sys.stderr,
    )
    declined_rate = round(declined / max(1, len(narrowed_calls)), 4)
    lines = {
        "slm_only": lines["slm_only"],
        "cascade": lines["cascade"],
        "cascade_narrowed": {
            **narrowed_line(slm, escalate, narrowed_calls),
            "declined_rate": declined_rate,
        },
        # Narrowed requests through the Batch API at its price; a document's latency is
        # its SLM latency plus the batches' turnaround (here seconds, up to a day there).
        "cascade_batch": {
            **narrowed_line(slm, escalate, batch_calls, batch=True),
            "declined_rate": round(
                sum(len(calls) > 1 for calls in batch_calls) / max(1, len(batch_calls)), 4
            ),
        },
        "all_frontier": lines["all_frontier"],
    }
    return StandInRun(
        name=name,
        frontier=run,
        lines=lines,
        curve=trade_off(conf, slm.correct, usd, accuracy),
        usd_per_call=usd,
        accuracy=float(np.mean(right)),
    )


def policy_report(policy: Policy, held: Scores, usd_per_call: float) -> dict[str, Any]:
    """The fitted policy and what it does on the held-out data it was fitted on."""
    conf = held.confidence(policy.temperature)
    econ = Economics(usd_per_call, 1.0)
    return {
        **policy.to_dict(),
        "target_text": policy.target.describe(),
        "heldout_outcome": outcome(
            policy.escalate(held.predicted, conf), held.correct, econ
        ).as_dict(),
        "heldout_slm_accuracy": round(float(held.correct.mean()), 4),
    }


def candidates_report(policy: Policy, held: Scores, slm: Scores) -> dict[str, Any]:
    """The narrowing rule and the top-k recall curves (k = 1..10): every held-out
    document, the held-out documents the policy escalates, and the evaluation data."""
    conf = held.confidence(policy.temperature)
    escalated = policy.escalate(held.predicted, conf)
    width = len(held.labels)

    def curve_of(scores: Scores, rows: npt.NDArray[np.bool_] | None = None) -> list[float]:
        ranks = gold_ranks(scores.logits, scores.gold)
        chosen = ranks if rows is None else ranks[rows]
        return [round(float(r), 4) for r in recall_curve(chosen, width)[:10]]

    eval_escalated = policy.escalate(slm.predicted, slm.confidence(policy.temperature))
    return {
        "rule": policy.candidates.to_dict() if policy.candidates else None,
        "recall_at_k": {
            "heldout": curve_of(held),
            "heldout_escalated": curve_of(held, escalated),
            "eval": curve_of(slm),
            "eval_escalated": curve_of(slm, eval_escalated),
        },
    }


def setup_report(
    args: argparse.Namespace,
    data: Examples,
    heldout: Path,
    scored: tuple[Scores, Scores],
    run: StandInRun,
) -> dict[str, Any]:
    """What was measured, on what, with which settings."""
    results = run.frontier.results
    held, slm = scored
    return {
        "model": args.model,
        "data": args.data,
        "documents": len(data),
        "heldout": str(heldout),
        "heldout_documents": len(held.gold),
        # Another process on the cores slows llama.cpp threads badly; these show it.
        "slm_docs_per_s": {
            "heldout": round(len(held.gold) / held.elapsed_s, 2),
            "eval": round(len(slm.gold) / slm.elapsed_s, 2),
        },
        "load_average_1m_end": round(os.getloadavg()[0], 2),
        "delay_ms": args.delay_ms,
        "concurrency": args.concurrency,
        "threads": args.threads,
        "gpu_layers": args.gpu_layers,
        "parallel": args.parallel,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "mean_prompt_tokens": round(float(np.mean([r.prompt_tokens for r in results])), 2),
        "mean_completion_tokens": round(float(np.mean([r.completion_tokens for r in results])), 2),
    }


def stand_in_report(run: StandInRun) -> dict[str, Any]:
    """A stand-in's frontier figures beyond the three lines."""
    return {
        "accuracy": round(run.accuracy, 4),
        "failures": run.frontier.failures,
        "wall_s": round(run.frontier.wall_s, 2),
        "usd_per_call": {m: round(v, 8) for m, v in run.usd_per_call.items()},
        "ratios": ratios(run.lines),
        "ratios_narrowed": ratios(run.lines, "cascade_narrowed"),
        "ratios_batch": ratios(run.lines, "cascade_batch"),
    }


def main() -> None:
    args = parse_args()
    taxonomy = Taxonomy.from_file(args.taxonomy)
    options = RuntimeOptions(
        n_threads=args.threads,
        n_gpu_layers=args.gpu_layers,
        parallel=args.parallel,
        serve_type=get_settings().serve_type,
    )
    clf, gguf = load_classifier(Path(args.model), tuple(taxonomy.names), options)
    heldout_path = heldout_file(clf.spec.manifest, args.heldout)
    heldout = load_examples(heldout_path, "text", "label", taxonomy, None)
    data = load_examples(Path(args.data), args.text_column, args.label_column, taxonomy, args.limit)

    # SLM first and alone on the machine, so its latencies are not the stand-in's too.
    clf.classify(data[0][0])  # the first call pays one-off allocations
    held = score_with_progress(clf, heldout, "held-out")
    policy = fit_on_heldout(held, chosen_target(args), args.per_label, args.candidate_recall)
    slm = score_with_progress(clf, data, "eval")
    del clf

    conf = slm.confidence(policy.temperature)
    escalate = policy.escalate(slm.predicted, conf)
    k = policy.candidates.k if policy.candidates else 0
    candidates = (
        top_labels(slm.probs(policy.temperature)[escalate], taxonomy.names, k) if k else None
    )
    counter = TokenCounter(gguf)
    runs = [
        measure_stand_in(p, data, taxonomy, counter, slm, conf, escalate, candidates, args)
        for p in STAND_INS
    ]
    first, rest = runs[0], runs[1:]
    report: dict[str, Any] = {
        **first.lines,  # the 100 % stand-in's lines are the top-level ones
        **{f"stand_in_{r.name}": r.lines for r in rest},
        "frontier": {r.name: stand_in_report(r) for r in runs},
        "policy": policy_report(policy, held, first.usd_per_call["gpt-4o"]),
        "curves": {r.name: r.curve for r in runs},
        "candidates": candidates_report(policy, held, slm),
        # Which signal of the forward pass ranks escalations best, out of fold.
        "ranking": {
            "heldout": compare_signals(held.logits, held.gold),
            "eval": compare_signals(slm.logits, slm.gold),
        },
        "setup": setup_report(args, data, heldout_path, (held, slm), first),
    }
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print_header(report)
    for run in runs:
        print_lines(f"{run.name} %", run.lines, run.frontier)
    for run in runs:
        print_curve(f"{run.name} %", run.curve)
    print_candidates(report["candidates"])
    print_ranking(report["ranking"])


if __name__ == "__main__":
    main()
