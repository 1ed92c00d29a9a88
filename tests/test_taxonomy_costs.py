from __future__ import annotations

from pathlib import Path

import pytest

from shiftdown.costs import DEFAULT_PRICES, cost_usd, find_price
from shiftdown.errors import TaxonomyError
from shiftdown.taxonomy import Taxonomy


def test_taxonomy_shapes_agree(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('["billing", "refund"]')
    (tmp_path / "b.yaml").write_text("labels:\n  - name: billing\n  - name: refund\n")
    (tmp_path / "c.yaml").write_text("billing: Invoices and charges\nrefund: Money back\n")
    a = Taxonomy.from_file(tmp_path / "a.json")
    b = Taxonomy.from_file(tmp_path / "b.yaml")
    c = Taxonomy.from_file(tmp_path / "c.yaml")
    assert a.names == b.names == c.names == ["billing", "refund"]
    assert a.hash == b.hash != c.hash  # descriptions are part of the identity
    assert c.labels[0].description == "Invoices and charges"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (["a", "b", "a"], "more than once"),
        (["a", "  "], "empty"),
        ([], "at least one"),
        ([1, 2], "expected a name"),
        ("nope", "list of labels"),
    ],
)
def test_bad_taxonomies_are_refused(data: object, message: str) -> None:
    with pytest.raises(TaxonomyError, match=message):
        Taxonomy.from_data(data)


def test_unparseable_taxonomy_file(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text("[oops")
    with pytest.raises(TaxonomyError, match="not valid JSON"):
        Taxonomy.from_file(path)


def test_prices_match_dated_snapshots_to_their_family() -> None:
    assert find_price("gpt-4o-2024-08-06", DEFAULT_PRICES) == DEFAULT_PRICES["gpt-4o"]
    assert find_price("gpt-4o-mini-2024-07-18", DEFAULT_PRICES) == DEFAULT_PRICES["gpt-4o-mini"]
    assert find_price("llama-local", DEFAULT_PRICES) is None
    # 1M prompt tokens and 1M completion tokens of gpt-4o: $2.50 + $10.00.
    assert cost_usd("gpt-4o", 1_000_000, 1_000_000, DEFAULT_PRICES) == pytest.approx(12.5)
    assert cost_usd("gpt-4", 1000, 10, DEFAULT_PRICES) == pytest.approx(0.0306)
