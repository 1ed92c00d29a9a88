"""Frontier price table and the dollar cost of recorded token counts."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Price(BaseModel):
    """USD per million tokens for one model."""

    input_per_1m: float = Field(ge=0, description="USD per million prompt tokens.")
    output_per_1m: float = Field(ge=0, description="USD per million completion tokens.")
    cached_input_per_1m: float | None = Field(
        default=None,
        ge=0,
        description="USD per million prompt tokens served from the provider's prompt cache "
        "(None: the model has no cache discount; they cost input_per_1m).",
    )

    batch_factor: float = Field(
        default=0.5,
        ge=0,
        description="Share of these prices a Batch API request pays (OpenAI: half).",
    )

    def cached_rate(self) -> float:
        """USD per million cached prompt tokens."""
        return self.input_per_1m if self.cached_input_per_1m is None else self.cached_input_per_1m


# List prices in USD per million tokens as published by OpenAI, with the cached-input
# price of the models that have prompt caching (a repeated prompt prefix of 1,024 tokens
# or more is served from the cache).
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4": Price(input_per_1m=30.0, output_per_1m=60.0),
    "gpt-4-turbo": Price(input_per_1m=10.0, output_per_1m=30.0),
    "gpt-4o": Price(input_per_1m=2.5, output_per_1m=10.0, cached_input_per_1m=1.25),
    "gpt-4o-mini": Price(input_per_1m=0.15, output_per_1m=0.6, cached_input_per_1m=0.075),
    "gpt-4.1": Price(input_per_1m=2.0, output_per_1m=8.0, cached_input_per_1m=0.5),
    "gpt-4.1-mini": Price(input_per_1m=0.4, output_per_1m=1.6, cached_input_per_1m=0.1),
}


def find_price(model: str, prices: dict[str, Price]) -> Price | None:
    """The price of ``model``: an exact entry, else the longest entry it starts with.

    Dated snapshots such as ``gpt-4o-2024-08-06`` take their family's price; the longest
    match wins so that ``gpt-4o-mini-…`` is not priced as ``gpt-4o``.
    """
    if model in prices:
        return prices[model]
    matches = [name for name in prices if model.startswith(name + "-")]
    return prices[max(matches, key=len)] if matches else None


def cost_usd(
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    prices: dict[str, Price],
    cached_tokens: int = 0,
    batch: bool = False,
) -> float | None:
    """Dollar cost of one call, or None when the model has no price. ``cached_tokens``
    of the prompt tokens (OpenAI's ``usage.prompt_tokens_details.cached_tokens``) are
    priced at the cached-input rate; a Batch API request (``batch``) pays the price
    table's ``batch_factor`` of it all."""
    price = find_price(model, prices)
    if price is None:
        return None
    cached = min(max(cached_tokens, 0), prompt_tokens)
    usd = (
        (prompt_tokens - cached) * price.input_per_1m
        + cached * price.cached_rate()
        + completion_tokens * price.output_per_1m
    ) / 1e6
    return usd * price.batch_factor if batch else usd
