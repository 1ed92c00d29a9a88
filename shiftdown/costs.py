"""Frontier price table and the dollar cost of recorded token counts."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Price(BaseModel):
    """USD per million tokens for one model."""

    input_per_1m: float = Field(ge=0, description="USD per million prompt tokens.")
    output_per_1m: float = Field(ge=0, description="USD per million completion tokens.")


# List prices in USD per million tokens as published by OpenAI.
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4": Price(input_per_1m=30.0, output_per_1m=60.0),
    "gpt-4-turbo": Price(input_per_1m=10.0, output_per_1m=30.0),
    "gpt-4o": Price(input_per_1m=2.5, output_per_1m=10.0),
    "gpt-4o-mini": Price(input_per_1m=0.15, output_per_1m=0.6),
    "gpt-4.1": Price(input_per_1m=2.0, output_per_1m=8.0),
    "gpt-4.1-mini": Price(input_per_1m=0.4, output_per_1m=1.6),
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
    model: str, prompt_tokens: int, completion_tokens: int, prices: dict[str, Price]
) -> float | None:
    """Dollar cost of one call, or None when the model has no price."""
    price = find_price(model, prices)
    if price is None:
        return None
    return (prompt_tokens * price.input_per_1m + completion_tokens * price.output_per_1m) / 1e6
