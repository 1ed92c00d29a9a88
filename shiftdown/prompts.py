"""The frontier request's text and answer schema, shared by the frontier worker and
by the report's estimate of what an all-frontier run would cost."""

from __future__ import annotations

from typing import Any

from shiftdown.taxonomy import NONE_LABEL, Label, Taxonomy

# The answer of a narrowed request whose document fits none of the labels it offers.
NONE_OF_THESE = "none_of_these"

# What the none outcome means, where a request offers it.
NONE_DESCRIPTION = (
    "The document fits none of the labels above (another topic, spam, noise, another language)."
)

# OpenAI's rule of thumb for English text, used only when no call has been recorded.
CHARS_PER_TOKEN = 4.0


def frontier_system_prompt(taxonomy: Taxonomy) -> str:
    """The instruction: the taxonomy, one label per line with its description, and on
    an open-set task the none outcome last."""
    lines = [
        f"- {lbl.name}: {lbl.description}" if lbl.description else f"- {lbl.name}"
        for lbl in taxonomy.labels
    ]
    if taxonomy.open_set:
        lines.append(f"- {NONE_LABEL}: {NONE_DESCRIPTION}")
    return (
        "You are a precise document classifier. Assign the document exactly one label "
        "from this list:\n" + "\n".join(lines) + '\nAnswer with JSON: {"label": "<label>"}.'
    )


def narrowed(taxonomy: Taxonomy, candidates: list[str]) -> Taxonomy:
    """The labels a narrowed request offers: ``candidates`` (in their order, with their
    descriptions) and "none of these"."""
    by_name = {label.name: label for label in taxonomy.labels}
    none = Label(NONE_OF_THESE, "The document fits none of the labels above.")
    return Taxonomy((*(by_name[name] for name in candidates), none))


def answer_schema(taxonomy: Taxonomy) -> dict[str, Any]:
    """JSON schema that only admits a label of the taxonomy (or, open-set, none)."""
    return {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": taxonomy.outcomes}},
        "required": ["label"],
        "additionalProperties": False,
    }


def estimate_tokens(taxonomy: Taxonomy, text_chars: float) -> tuple[float, float]:
    """Rough (prompt, completion) tokens of one frontier call on a text of this length."""
    prompt = (len(frontier_system_prompt(taxonomy)) + text_chars) / CHARS_PER_TOKEN + 8
    longest = max(len(name) for name in taxonomy.names)
    return prompt, (longest + 12) / CHARS_PER_TOKEN


# OpenAI caches a repeated prompt prefix from 1,024 tokens, in steps of 128.
CACHE_MIN_TOKENS, CACHE_STEP_TOKENS = 1024, 128


def estimate_cached_tokens(taxonomy: Taxonomy) -> float:
    """Rough prompt tokens a provider's cache would serve on a repeated whole-taxonomy
    request: its fixed prefix (the system message), when long enough to be cached."""
    fixed = len(frontier_system_prompt(taxonomy)) / CHARS_PER_TOKEN
    if fixed < CACHE_MIN_TOKENS:
        return 0.0
    return float(int(fixed // CACHE_STEP_TOKENS) * CACHE_STEP_TOKENS)
