"""Reports run under the read-only role that ``migrations/readonly_role.sql`` creates,
and that role cannot change anything."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.conftest import ROOT


def test_reports_run_under_the_read_only_role(
    use_settings: Callable[..., None],
    pg_url: str,
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
) -> None:
    use_settings(SHIFTDOWN_DATABASE_URL=pg_url)
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    docs = write_jsonl([{"text": r["text"]} for r in banking[:5]])
    assert (
        runner.invoke(cli, ["run", str(docs), "--taxonomy", str(banking_taxonomy)]).exit_code == 0
    )

    role = f"shiftdown_reader_{uuid.uuid4().hex[:8]}"
    sql = (ROOT / "migrations" / "readonly_role.sql").read_text().replace("shiftdown_reader", role)
    owner = pg_url.replace("+psycopg", "")
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute(sql)
    reader = owner.replace("postgres@", f"{role}@")
    try:
        use_settings(
            SHIFTDOWN_DATABASE_URL=reader.replace("postgresql://", "postgresql+psycopg://")
        )
        report = runner.invoke(cli, ["report", "1", "--format", "json"])
        assert report.exit_code == 0, report.output
        assert json.loads(report.stdout)["documents"] == 5
        assert runner.invoke(cli, ["status", "1"]).exit_code == 0
        with psycopg.connect(reader) as conn:
            assert conn.execute("SELECT count(*) FROM run_summary").fetchone() == (1,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("UPDATE documents SET text = 'changed'")
    finally:
        use_settings(SHIFTDOWN_DATABASE_URL=pg_url)
        with psycopg.connect(owner, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
