"""The frontier request's text and answer schema, shared by the frontier worker and
by the report's estimate of what an all-frontier run would cost."""

from __future__ import annotations

from typing import Any

from shiftdown.taxonomy import Taxonomy

# OpenAI's rule of thumb for English text, used only when no call has been recorded.
CHARS_PER_TOKEN = 4.0


def frontier_system_prompt(taxonomy: Taxonomy) -> str:
    """The instruction: the taxonomy, one label per line with its description."""
    lines = [
        f"- {lbl.name}: {lbl.description}" if lbl.description else f"- {lbl.name}"
        for lbl in taxonomy.labels
    ]
    return (
        "You are a precise document classifier. Assign the document exactly one label "
        "from this list:\n" + "\n".join(lines) + '\nAnswer with JSON: {"label": "<label>"}.'
    )


def answer_schema(taxonomy: Taxonomy) -> dict[str, Any]:
    """JSON schema that only admits a label of the taxonomy."""
    return {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": taxonomy.names}},
        "required": ["label"],
        "additionalProperties": False,
    }


def estimate_tokens(taxonomy: Taxonomy, text_chars: float) -> tuple[float, float]:
    """Rough (prompt, completion) tokens of one frontier call on a text of this length."""
    prompt = (len(frontier_system_prompt(taxonomy)) + text_chars) / CHARS_PER_TOKEN + 8
    longest = max(len(name) for name in taxonomy.names)
    return prompt, (longest + 12) / CHARS_PER_TOKEN
