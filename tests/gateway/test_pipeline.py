from __future__ import annotations

import asyncio

from margin.gateway import pipeline
from margin.types import RequestContext, Response


class Sleepy:
    def __init__(self, name: str, before_s: float, after_s: float) -> None:
        self.name, self.before_s, self.after_s = name, before_s, after_s

    async def __call__(self, ctx, call_next):
        await asyncio.sleep(self.before_s)
        resp = await call_next(ctx)
        await asyncio.sleep(self.after_s)
        resp.headers[self.name] = "seen"
        return resp


class ShortCircuit:
    name = "cache"

    async def __call__(self, ctx, call_next):
        return Response(200, payload={"cached": True})


async def _terminal(ctx):
    await asyncio.sleep(0.05)
    return Response(200, payload={"ok": True})


def test_stages_run_in_order_and_record_their_own_time():
    handler = pipeline.build([Sleepy("a", 0.02, 0.0), Sleepy("b", 0.0, 0.03)], _terminal)
    ctx = RequestContext("r", "chat", {}, {})
    resp = asyncio.run(handler(ctx))
    assert resp.payload == {"ok": True} and resp.headers == {"b": "seen", "a": "seen"}
    # own time excludes later stages and the terminal (50 ms)
    assert 15 <= ctx.stage_ms["a"] < 65  # with the terminal it would be >= 70
    assert 25 <= ctx.stage_ms["b"] < 78  # with the terminal it would be >= 80


def test_a_stage_can_answer_on_its_own():
    called = []

    async def terminal(ctx):
        called.append(1)
        return Response(200)

    handler = pipeline.build([ShortCircuit()], terminal)
    resp = asyncio.run(handler(RequestContext("r", "chat", {}, {})))
    assert resp.payload == {"cached": True} and not called
