"""The row builder fills exactly the ledger's columns, with the types the schema declares,
and the row survives the real writer into SQLite unchanged."""

from __future__ import annotations

import pytest

from margin.config import LedgerConfig
from margin.gateway.record import ledger_row
from margin.metering import schema
from margin.metering.db import connect
from margin.metering.ledger import LedgerWriter
from margin.types import Attempt, RequestContext, ShadowOf


def _ctx() -> RequestContext:
    ctx = RequestContext(request_id="r1", endpoint="chat", headers={},
                         body={"model": "small", "messages": [{"role": "user", "content": "hi"}]})
    ctx.user, ctx.team, ctx.feature, ctx.key_id = "alice", "core", "chat", "k1"
    ctx.requested_model, ctx.served_model, ctx.provider, ctx.route = "small", "small", "openai", "r"
    ctx.usage.prompt_tokens, ctx.usage.completion_tokens = 12, 3
    ctx.cost_usd, ctx.cache_similarity, ctx.ttft_ms = 0.0125, 0.93, 4.5
    ctx.latency_ms, ctx.upstream_ms, ctx.overhead_ms = 30.0, 28.5, 1.5
    ctx.stage_ms = {"auth": 0.01}
    ctx.attempts = [Attempt(model="small", deployment="d0", status=200, latency_ms=28.0)]
    ctx.prompt_hash, ctx.tokens_before_compression, ctx.tokens_after_compression = "h", 20, 12
    ctx.notes = {"batch_id": 3}
    ctx.response_text = "hello"
    ctx.optimization, ctx.optimization_saved_usd = "route:auto", 0.002
    ctx.shadow = ShadowOf(request_id="r0", judge="exact", agreement=False, score=0.0)
    return ctx


@pytest.mark.parametrize("log_content", [False, True])
def test_row_has_every_column_with_its_declared_type(tmp_path, log_content):
    row = ledger_row(_ctx(), log_content=log_content)
    assert list(row) == list(schema.NAMES)
    for name, value in row.items():
        col = schema.BY_NAME[name]
        assert value is not None or col.nullable, name
        if value is not None:
            assert isinstance(value, col.py), (name, value)
    assert (row["prompt"] is not None) is log_content

    url = str(tmp_path / "l.db")
    w = LedgerWriter(LedgerConfig(url=url))
    w.start()
    w.submit(row)
    w.close()
    db = connect(url)
    (stored,) = db.query(f"SELECT {', '.join(schema.NAMES)} FROM requests")
    db.close()
    assert dict(zip(schema.NAMES, stored)) == row
