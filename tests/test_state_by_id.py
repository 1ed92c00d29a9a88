"""Statements that name documents by id go through the primary key on Postgres, even
when the statistics saw no backlog and a burst has since been queued: the plain state
test let the planner read every queued document through the unsettled-documents index
on each task."""

from __future__ import annotations

import json
from collections.abc import Callable

from sqlalchemy import Select, select, text
from sqlalchemy.orm import Session

import migrations
from shiftdown.db import session_scope
from shiftdown.schema import DocState, Document, state_in, utcnow
from tests.fake_run import write_fake_run
from workers.store import _PG_STORE_SLM

PARTIAL = "ix_documents_unsettled_updated_at"


def _plan(session: Session, sql: str, params: dict[str, object] | None = None) -> str:
    rows = session.execute(text("EXPLAIN " + sql), params or {})
    return "\n".join(row[0] for row in rows)


def _literal(session: Session, query: Select[int]) -> str:
    return str(query.compile(session.get_bind(), compile_kwargs={"literal_binds": True}))


def test_lookups_by_id_use_the_primary_key_after_a_burst(
    pg_url: str, use_settings: Callable[..., None]
) -> None:
    migrations.upgrade(pg_url)
    use_settings(SHIFTDOWN_DATABASE_URL=pg_url)
    run = write_fake_run(500)
    with session_scope() as s:
        # Statistics taken while nothing waits, then a burst arrives.
        s.execute(text("ANALYZE documents"))
        s.execute(
            text(
                "INSERT INTO documents (run_id, external_id, line_no, text, state, truncated,"
                " created_at, updated_at) SELECT :run, 'burst-' || g, g, 'text', 'queued',"
                " false, now(), now() FROM generate_series(1, 50000) AS g"
            ),
            {"run": run.run_id},
        )
    with session_scope() as s:
        ids = list(
            s.scalars(select(Document.id).where(Document.state == DocState.QUEUED).limit(32))
        )
        # What the old test, the column itself, does here: the reason for state_in.
        plain = select(Document.id).where(Document.id.in_(ids), Document.state == "queued")
        wrapped = select(Document.id).where(Document.id.in_(ids), state_in([DocState.QUEUED]))
        assert PARTIAL in _plan(s, _literal(s, plain))
        load = _plan(s, _literal(s, wrapped))
        assert "pk_documents" in load and PARTIAL not in load
        rows = [
            {"document_id": i, "state": "classified", "run_id": run.run_id, "model": "m"}
            for i in ids
        ]
        params = {
            "rows": json.dumps(rows),
            "stage": "slm",
            "now": utcnow(),
            "queued": DocState.QUEUED.value,
        }
        store = _plan(s, _PG_STORE_SLM.text, params)
        assert "pk_documents" in store and PARTIAL not in store
