"""One classification call to an OpenAI-compatible endpoint, constrained to a taxonomy.

The answer is constrained with structured output: OpenAI's ``json_schema`` response
format, or the ``json_object`` + ``schema`` form that llama.cpp's server accepts. In
``auto`` mode the first rejection of ``json_schema`` (or of ``logprobs``) switches this
client to what the server does accept, once, for the rest of the process.

``classify`` never raises for an API failure: it returns a ``FrontierResult`` saying
whether the attempt succeeded, may succeed if retried, or cannot, with the tokens billed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import openai

from shiftdown.costs import cost_usd
from shiftdown.prompts import NONE_OF_THESE, answer_schema, frontier_system_prompt, narrowed
from shiftdown.settings import Settings
from shiftdown.taxonomy import Taxonomy

OK, RETRYABLE, FATAL = "ok", "retryable", "fatal"
# 401 and 403: the key, not the document, is refused.
CREDENTIALS_REFUSED = (401, 403)
# How those two kinds of failure begin their error text (the report and the metrics
# group parked documents by it).
CREDENTIALS = "credentials refused"
NOT_AN_ANSWER = "not an API answer"


@dataclass(frozen=True)
class FrontierResult:
    """The outcome of one attempt, successful or not, with what it cost."""

    status: str
    model: str
    latency_ms: float
    response_format: str
    label: str | None = None
    confidence: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float | None = None
    http_status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None
    # Labels a narrowed request offered (None: the whole taxonomy).
    offered: int | None = None
    # A narrowed request answered "none of these": no label, the whole taxonomy next.
    declined: bool = False
    # The frontier could not be reached or turned the request away for load (no
    # connection, a timeout, 408/409/429, 5xx): once retries run out the document waits
    # for it (awaiting_frontier) instead of failing, and the breaker counts it.
    unavailable: bool = False
    # The frontier refused this deployment's credentials (401/403: an expired or revoked
    # key, a gateway's policy): unavailable to every document alike, so the document is
    # parked at once, without retries, and the breaker counts it.
    credentials: bool = False


def _mentions(exc: openai.APIStatusError, *words: str) -> bool:
    text = f"{exc.message} {exc.body}".lower()
    return any(w in text for w in words)


def _retry_after(exc: openai.APIStatusError) -> float | None:
    value = exc.response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class FrontierClient:
    """An OpenAI client bound to one model, with the server's capabilities learned."""

    def __init__(self, settings: Settings) -> None:
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        self._client = openai.OpenAI(
            # Local OpenAI-compatible servers accept any key; the client insists on one.
            api_key=key or "unused",
            base_url=settings.openai_base_url,
            timeout=settings.frontier_timeout_s,
            max_retries=settings.frontier_client_retries,
        )
        self.model = settings.frontier_model
        self._price_model = settings.frontier_price_model or settings.frontier_model
        self._prices = settings.price_table()
        self._max_chars = settings.max_text_chars
        self._auto = settings.frontier_response_format == "auto"
        self.response_format = "json_schema" if self._auto else settings.frontier_response_format
        self.logprobs = True

    def request_body(self, text: str, taxonomy: Taxonomy) -> dict[str, Any]:
        """The chat-completion request for ``text`` (a synchronous call's arguments, and a
        Batch API line's body)."""
        # The fixed part first (instructions and labels in the system message, the same
        # for every document of a full-taxonomy call), then the document: a provider's
        # prompt cache serves a repeated prefix at its cached-input price.
        schema = answer_schema(taxonomy)
        if self.response_format == "json_schema":
            fmt: dict[str, Any] = {
                "type": "json_schema",
                "json_schema": {"name": "classification", "strict": True, "schema": schema},
            }
        else:
            fmt = {"type": "json_object", "schema": schema}
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": frontier_system_prompt(taxonomy)},
                {"role": "user", "content": text[: self._max_chars]},
            ],
            "response_format": fmt,
            "temperature": 0,
            "max_tokens": 64,
        }
        if self.logprobs:
            request["logprobs"] = True
        return request

    def _request(self, text: str, taxonomy: Taxonomy) -> Any:
        return self._client.chat.completions.create(**self.request_body(text, taxonomy))

    @property
    def api(self) -> openai.OpenAI:
        """The underlying OpenAI client (the Batch API's files and batches)."""
        return self._client

    def _result(
        self, start: float, status: str, batch: bool = False, **fields: Any
    ) -> FrontierResult:
        pt, ct = fields.get("prompt_tokens", 0), fields.get("completion_tokens", 0)
        cached = fields.get("cached_tokens", 0)
        usd = cost_usd(self._price_model, pt, ct, self._prices, cached, batch) if pt or ct else 0.0
        return FrontierResult(
            status=status,
            model=self.model,
            latency_ms=(time.perf_counter() - start) * 1000.0,
            response_format=self.response_format,
            cost_usd=usd,
            **fields,
        )

    def classify(
        self, text: str, taxonomy: Taxonomy, candidates: list[str] | None = None
    ) -> FrontierResult:
        """One attempt (plus at most one capability fallback) to label ``text``.

        With ``candidates`` (the SLM's top labels) the request offers only those and
        "none of these"; that answer comes back ``declined``, with no label.
        """
        result = self._classify(text, narrowed(taxonomy, candidates) if candidates else taxonomy)
        return self._narrowed(result, candidates)

    def batch_result(
        self,
        status_code: int,
        body: dict[str, Any] | None,
        error: str | None,
        taxonomy: Taxonomy,
        candidates: list[str] | None,
        latency_ms: float,
    ) -> FrontierResult:
        """One Batch API output line as a result, priced at the batch price: ``body``
        the chat completion the provider answered with ``status_code``, or ``error``."""
        start = time.perf_counter() - latency_ms / 1000.0
        offered = narrowed(taxonomy, candidates) if candidates else taxonomy
        if body is None or status_code >= 400:
            transient = status_code in (0, 408, 409, 429) or status_code >= 500
            result = self._result(
                start,
                RETRYABLE if transient else FATAL,
                http_status=status_code or None,
                error=(error or f"HTTP {status_code}")[:500],
                unavailable=transient,
            )
        else:
            completion = openai.types.chat.ChatCompletion.model_validate(body)
            result = self._parse(start, completion, offered, batch=True)
        return self._narrowed(result, candidates)

    def _narrowed(self, result: FrontierResult, candidates: list[str] | None) -> FrontierResult:
        if not candidates:
            return result
        declined = result.status == OK and result.label == NONE_OF_THESE
        return replace(
            result,
            offered=len(candidates),
            declined=declined,
            label=None if declined else result.label,
        )

    def _classify(self, text: str, taxonomy: Taxonomy) -> FrontierResult:
        start = time.perf_counter()
        for _ in range(3):
            try:
                response = self._request(text, taxonomy)
                break
            except openai.APIStatusError as exc:
                # Servers signal an unsupported option with 400, 422 or even 500 (llama.cpp's
                # server fails request validation with a 500); the message names it.
                if (
                    self._auto
                    and self.response_format == "json_schema"
                    and _mentions(exc, "json_schema")
                ):
                    self.response_format = "json_object"
                    continue
                if self.logprobs and _mentions(exc, "logprobs"):
                    self.logprobs = False
                    continue
                if exc.status_code in CREDENTIALS_REFUSED:
                    return self._result(
                        start,
                        RETRYABLE,
                        http_status=exc.status_code,
                        error=f"{CREDENTIALS}: HTTP {exc.status_code}: {exc.message}"[:500],
                        unavailable=True,
                        credentials=True,
                    )
                transient = exc.status_code in (408, 409, 429) or exc.status_code >= 500
                return self._result(
                    start,
                    RETRYABLE if transient else FATAL,
                    http_status=exc.status_code,
                    error=f"HTTP {exc.status_code}: {exc.message}"[:500],
                    retry_after_s=_retry_after(exc),
                    unavailable=transient,
                )
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                return self._result(
                    start,
                    RETRYABLE,
                    error=f"{type(exc).__name__}: {exc}"[:500],
                    unavailable=True,
                )
            except (openai.APIError, ValueError) as exc:
                # A 200 whose body is not a chat completion at all (the client raises
                # JSONDecodeError for one that is not JSON): a proxy's maintenance page, a
                # captive portal. Nothing answered the request, so it counts as an
                # outage (breaker, parking), unlike a completion whose content is wrong.
                return self._result(
                    start,
                    RETRYABLE,
                    error=f"{NOT_AN_ANSWER}: {type(exc).__name__}: {exc}"[:500],
                    unavailable=True,
                )
        else:
            return self._result(start, FATAL, error="the server rejected every request format")
        if not isinstance(response, openai.types.chat.ChatCompletion):
            # A 200 that is not JSON at all (a proxy's maintenance page, served as
            # text/html): the client hands back the body as text.
            return self._result(
                start,
                RETRYABLE,
                error=f"{NOT_AN_ANSWER}: {str(response)[:200]!r}"[:500],
                unavailable=True,
            )
        return self._parse(start, response, taxonomy)

    def _parse(
        self, start: float, response: Any, taxonomy: Taxonomy, batch: bool = False
    ) -> FrontierResult:
        usage = response.usage
        details = getattr(usage, "prompt_tokens_details", None) if usage else None
        tokens = {
            "prompt_tokens": int(usage.prompt_tokens) if usage else 0,
            "completion_tokens": int(usage.completion_tokens) if usage else 0,
            "cached_tokens": int(getattr(details, "cached_tokens", 0) or 0),
        }
        choice = response.choices[0] if response.choices else None
        content = (choice.message.content or "") if choice else ""
        try:
            data = json.loads(content)
            label = data["label"] if isinstance(data, dict) else None
        except (json.JSONDecodeError, KeyError):
            # A billed answer that is not the requested JSON: retrying may fix it.
            return self._result(
                start, RETRYABLE, batch, error=f"malformed answer: {content[:200]!r}", **tokens
            )
        if label not in taxonomy:
            return self._result(
                start,
                RETRYABLE,
                batch,
                error=f"label outside the taxonomy: {label!r}"[:500],
                **tokens,
            )
        confidence = None
        logprobs = getattr(choice, "logprobs", None)
        if logprobs is not None and logprobs.content:
            # Constrained decoding forces the JSON scaffolding, so the answer's joint
            # probability is the label's probability.
            confidence = min(1.0, math.exp(sum(t.logprob for t in logprobs.content)))
        return self._result(start, OK, batch, label=label, confidence=confidence, **tokens)
