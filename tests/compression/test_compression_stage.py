"""Compression in the gateway over real HTTP: the upstream sees the compressed prompt, the
ledger has tokens before/after, each strategy's saving and the money saved, and
``margin ledger stats`` adds it up."""

from __future__ import annotations

import json

import httpx
import pytest
from click.testing import CliRunner

from margin.cli.ledger import ledger
from tests.conftest import fake_model
from tests.routing._helpers import ledger_rows

FILLER = "This turn talks about something that no longer matters to the question. " * 8


def _conversation() -> list[dict]:
    msgs = [{"role": "system", "content": "You    are a   helpful assistant."}]
    for i in range(8):
        msgs.append({"role": "user", "content": f"Old question {i}. {FILLER}"})
        msgs.append({"role": "assistant", "content": f"Old answer {i}. {FILLER}"})
    msgs.append({"role": "user", "content": "And what is the boiling point of water?"})
    return msgs


@pytest.fixture
def served(fake_upstream_factory, gateway_factory, tmp_path):
    up = fake_upstream_factory(name="m")
    db = str(tmp_path / "ledger.db")
    gw = gateway_factory({
        "models": [fake_model("m", up.url, input_cost_per_mtok=2.0)],
        "compression": {"enabled": True, "history": {"max_tokens": 300,
                                                     "keep_last_messages": 1}},
        "routes": [{"name": "plain", "tiers": ["m"], "compression": {"enabled": False}}],
        "ledger": {"url": db, "flush_interval_ms": 50},
        "cache": {"exact": {"enabled": False}}})
    return gw, up, db


def test_history_is_trimmed_and_the_saving_recorded(served):
    gw, up, db = served
    msgs = _conversation()
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=30,
                   json={"model": "m", "messages": msgs})
    assert r.status_code == 200
    sent = up.app.bodies[-1]["messages"]
    assert sent[0] == {"role": "system", "content": "You are a helpful assistant."}
    assert sent[-1]["content"] == "And what is the boiling point of water?"
    assert 1 < len(sent) < len(msgs)
    assert sent[1]["role"] == "user", "whole turns are dropped"

    # The route with compression off sends the conversation as it came.
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=30,
                   json={"model": "plain", "messages": msgs})
    assert r.status_code == 200 and up.app.bodies[-1]["messages"] == msgs

    row, plain = ledger_rows(db, 2)
    before, after = row["tokens_before_compression"], row["tokens_after_compression"]
    assert before > after > 0
    saved = row["notes"]["compression"]
    assert set(saved) == {"whitespace", "dedupe", "history"}
    assert saved["history"] > 0 and saved["whitespace"] > 0
    assert sum(saved.values()) == before - after
    dropped = row["notes"]["compression_dropped"]["history"]
    assert dropped["messages"] == len(msgs) - len(sent)
    assert row["notes"]["compression_saved_usd"] == pytest.approx((before - after) * 2e-6)
    assert plain["tokens_before_compression"] is None
    assert "compression" not in (plain["notes"] or {})

    result = CliRunner().invoke(ledger, ["stats", "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    comp = json.loads(result.output)["compression"]
    assert comp["requests"] == 1 and comp["tokens_saved"] == before - after
    assert comp["saved_usd"] == pytest.approx((before - after) * 2e-6)


def test_retrieval_pruning_over_http(fake_upstream_factory, gateway_factory, tmp_path):
    up = fake_upstream_factory(name="m")
    db = str(tmp_path / "ledger.db")
    gw = gateway_factory({
        "models": [fake_model("m", up.url)],
        "routes": [{"name": "rag", "tiers": ["m"], "compression": {
            "enabled": True, "retrieval": {"trigger_tokens": 200, "budget_tokens": 120,
                                           "chunk_tokens": 60, "similarity": "lexical"}}}],
        "ledger": {"url": db, "flush_interval_ms": 50},
        "cache": {"exact": {"enabled": False}}})
    paragraphs = [f"Section {i}. " + ("Filler about shipping schedules and office hours. " * 6)
                  for i in range(10)]
    paragraphs[6] = "Section 6. The refund window is thirty days from delivery for all orders."
    document = "\n\n".join(paragraphs)
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=30, json={
        "model": "rag", "messages": [{"role": "user", "content":
                                      f"{document}\n\nHow long is the refund window?"}]})
    assert r.status_code == 200
    sent = up.app.bodies[-1]["messages"][0]["content"]
    assert "refund window is thirty days" in sent
    assert sent.endswith("How long is the refund window?") and "[…]" in sent
    assert len(sent) < len(document) / 2
    (row,) = ledger_rows(db, 1)
    assert row["notes"]["compression"]["retrieval"] > 0
    assert row["notes"]["compression_dropped"]["retrieval"]["similarity"] == "lexical"
