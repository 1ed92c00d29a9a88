from __future__ import annotations

from sqlalchemy import create_engine, inspect, text

import migrations

TABLES = {
    "documents",
    "predictions",
    "frontier_calls",
    "runs",
    "tasks",
    "model_versions",
    "input_errors",
}


def _check_round_trip(url: str) -> None:
    migrations.upgrade(url)
    engine = create_engine(url)
    insp = inspect(engine)
    assert set(insp.get_table_names()) >= TABLES
    views = {
        "document_labels",
        "run_summary",
        "throughput_per_minute",
        "escalation_by_label",
        "frontier_cost_by_day",
        "slm_frontier_agreement",
        "latency_percentiles",
        "escalation_by_day",
        "escalation_reasons",
    }
    assert views <= set(insp.get_view_names())
    uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("predictions")}
    assert ("document_id", "stage") in uniques
    assert migrations.is_current(url)
    migrations.downgrade(url, "base")
    insp = inspect(engine)
    assert not TABLES & set(insp.get_table_names())
    assert not views & set(insp.get_view_names())
    migrations.upgrade(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM document_labels")).scalar() == 0
    engine.dispose()


def test_upgrade_downgrade_sqlite(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _check_round_trip(f"sqlite:///{tmp_path / 'm.db'}")


def test_upgrade_downgrade_postgres(pg_url: str) -> None:
    _check_round_trip(pg_url)
