"""Streamed requests are shadowed too, over real HTTP: a sampled stream is relayed whole to
the client, then its assembled answer is judged against the reference path's, and the
shadow row lands beside the streamed original."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.gateway.test_shadow import (RIGHT, WRONG, last_user, quality_json, route_config,
                                       rows, settle)


def stream(url: str, prompt: str, endpoint: str = "chat") -> tuple[str, dict[str, str]]:
    """The streamed text as the client put it together, and the response headers."""
    body: dict[str, Any] = {"model": "auto", "stream": True}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    parts: list[str] = []
    with httpx.stream("POST", url + path, json=body, timeout=30) as r:
        assert r.status_code == 200
        headers = dict(r.headers)
        done = False
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            for ch in json.loads(line[6:]).get("choices") or []:
                parts.append((ch.get("delta") or {}).get("content") or ch.get("text") or "")
        assert done
    return "".join(parts), headers


def _prompt(req: dict[str, Any]) -> str:
    return last_user(req) if "messages" in req else str(req.get("prompt"))


def test_a_sampled_stream_gets_its_shadow_row_and_verdict(fake_upstream_factory,
                                                          gateway_factory, tmp_path):
    small = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    # the top tier answers otherwise on prompts that say "odd": those shadows disagree
    large = fake_upstream_factory(
        answer_fn=lambda req: WRONG if "odd" in _prompt(req) else RIGHT)
    db = str(tmp_path / "l.db")
    gw = gateway_factory(route_config(small.url, large.url, db))
    prompts = [f"Is {i} {'odd' if i % 2 else 'even'}?" for i in range(6)]
    for i, p in enumerate(prompts):
        text, headers = stream(gw.url, p, "chat" if i < 4 else "completions")
        assert text.strip() == RIGHT and headers["x-margin-model"] == "small"
    got = rows(db, 2 * len(prompts))
    originals = [r for r in got if r["shadow_of"] is None]
    shadows = {r["shadow_of"]: r for r in got if r["shadow_of"] is not None}
    assert len(originals) == len(prompts) and len(shadows) == len(prompts)
    for o in originals:
        assert o["optimization"] == "route:auto" and o["optimization_saved_usd"] > 0
        s = shadows[o["id"]]
        assert (s["feature"], s["user_id"], s["model"], s["judge"], s["status"]) == \
            ("evaluation", None, "large", "exact", 200)
    # the reference call is not streamed, and each shadow asked the top tier once
    assert large.app.calls.get("/chat/completions", 0) == 4
    assert large.app.calls.get("/completions", 0) == 2
    assert not any(b.get("stream") for b in large.app.bodies)
    # verdicts: "odd" prompts disagree, the others agree (the text judged is the one the
    # client got, assembled from the relayed stream); the originals are in prompt order
    assert [shadows[o["id"]]["agreement"] for o in originals] == [1, 0, 1, 0, 1, 0]
    (report,) = quality_json(db)
    assert (report["served"], report["shadow_samples"], report["agreement"]) == (6, 6, 0.5)


def test_streams_not_drawn_are_not_shadowed(fake_upstream_factory, gateway_factory,
                                            tmp_path):
    small = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    large = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    db = str(tmp_path / "l.db")
    gw = gateway_factory(route_config(small.url, large.url, db, sample_rate=0.25))
    n = 40
    for i in range(n):
        text, _ = stream(gw.url, f"What is {i} and {i}?")
        assert text.strip() == RIGHT
    got = settle(db, 2.0)
    shadows = [r for r in got if r["shadow_of"] is not None]
    assert len(got) - len(shadows) == n
    # a quarter of 40 drawn: 10 expected (sd 2.7); outside [1, 20] has odds under 1e-4
    assert 1 <= len(shadows) <= 20
    assert large.app.calls.get("/chat/completions", 0) == len(shadows)


def test_a_streamed_cache_hit_replayed_from_the_cache_is_shadowed_too(
        fake_upstream_factory, gateway_factory, tmp_path):
    # the hit's stream is built from the stored answer (chunks as dicts, not relayed bytes)
    up = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    db = str(tmp_path / "l.db")
    cfg = route_config(up.url, up.url, db, include_exact_cache=True)
    gw = gateway_factory(cfg)
    body = {"model": "small", "stream": True,
            "messages": [{"role": "user", "content": "Name a prime above 90."}]}
    caches = []
    for _ in range(2):
        with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body,
                          timeout=30) as r:
            assert r.status_code == 200
            caches.append(r.headers["x-margin-cache"])
            text = "".join(
                (json.loads(line[6:])["choices"][0].get("delta") or {}).get("content") or ""
                for line in r.iter_lines()
                if line.startswith("data: {") and json.loads(line[6:]).get("choices"))
        assert text.strip() == RIGHT
    assert caches == ["miss", "exact"]
    got = rows(db, 3)
    (hit,) = [r for r in got if r["cache"] == "exact"]
    (shadow,) = [r for r in got if r["shadow_of"] is not None]
    assert shadow["shadow_of"] == hit["id"] and hit["optimization"] == "exact_cache"
    assert (shadow["model"], shadow["agreement"], shadow["status"]) == ("small", 1, 200)
