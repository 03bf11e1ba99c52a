"""Shared by the routing tests: scripted fake upstreams and reading ledger rows back."""

from __future__ import annotations

import json
import time
from typing import Any

from margin.bench.fake_upstream import FakeUpstream
from margin.metering.db import connect

ROW_COLUMNS = ("id", "model", "requested_model", "route", "status", "prompt_tokens",
               "completion_tokens", "cost_usd", "attempts", "notes", "streamed",
               "tokens_before_compression", "tokens_after_compression")


class ScriptedFake(FakeUpstream):
    """A fake that always answers ``text`` (unless a ``!text=`` directive says otherwise), so
    two fakes given the same prompt can answer differently."""

    def __init__(self, text: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.text = text

    def _answer(self, req: dict[str, Any], directive: dict[str, str]) -> str:
        return directive.get("text", self.text)


def ledger_rows(db_url: str, n: int, timeout_s: float = 15.0) -> list[dict[str, Any]]:
    """At least ``n`` ledger rows (oldest first), JSON columns decoded."""
    deadline = time.monotonic() + timeout_s
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            db = connect(db_url)
            try:
                rows = [dict(zip(ROW_COLUMNS, r)) for r in db.query(
                    f"SELECT {', '.join(ROW_COLUMNS)} FROM requests ORDER BY ts")]
            finally:
                db.close()
        except Exception:
            rows = []
        if len(rows) >= n:
            break
        time.sleep(0.1)
    for row in rows:
        for key in ("attempts", "notes"):
            row[key] = json.loads(row[key]) if row[key] else None
    return rows


def calls(server: Any) -> int:
    """Chat and completion calls a fake received."""
    app = server.app
    return app.calls["/chat/completions"] + app.calls["/completions"]
