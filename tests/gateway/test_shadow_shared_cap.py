"""The shadow spend cap across replicas, over real HTTP: two gateway processes sharing one
Redis spend one daily cap between them; a gateway whose Redis does not answer runs no
shadow at all (it never spends on a guess)."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from margin.procs import free_port
from tests.gateway.test_shadow import RIGHT, ask, route_config, settle


def test_two_gateways_sharing_redis_spend_one_daily_cap(fake_upstream_factory,
                                                         gateway_factory, tmp_path, redis_url):
    small = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    large = fake_upstream_factory(answer_fn=lambda req: RIGHT, delay_ms=30)
    prefix = f"t_shadowcap_{uuid.uuid4().hex[:10]}:"
    # a shadow really costs about 0.00013 USD at the large tier's prices (0.0008 reserved):
    # each gateway's 30 requests alone would spend about 0.003, so two caps would let the
    # pair spend well past it
    cap_usd = 0.004
    dbs = [str(tmp_path / f"g{i}.db") for i in range(2)]
    gws = []
    for db in dbs:
        cfg = route_config(small.url, large.url, db, daily_cap_usd=cap_usd)
        cfg["redis_url"] = redis_url
        cfg["limits"] = {"redis_prefix": prefix}
        # with redis_url the exact cache has a shared tier too: off, so that no answer of
        # an earlier run (or of the other gateway) is a hit that is never shadowed
        cfg["cache"] = {"exact": {"enabled": False}}
        gws.append(gateway_factory(cfg))
    r = redis.Redis.from_url(redis_url)
    try:
        n = 30
        with ThreadPoolExecutor(8) as pool:  # both gateways at once, shadows overlapping
            statuses = list(pool.map(
                lambda i: ask(gws[i % 2].url, f"What is {i} plus 7?").status_code,
                range(2 * n)))
        assert statuses == [200] * (2 * n)
        shadows = []
        for db in dbs:
            got = settle(db)
            assert len([x for x in got if x["shadow_of"] is None]) == n
            shadows.append([x for x in got if x["shadow_of"] is not None])
        spent = [sum(s["cost_usd"] for s in per) for per in shadows]
        # one cap for both: with a cap each, the two would spend close to twice it
        assert sum(spent) <= cap_usd
        assert sum(spent) > cap_usd / 2 and all(per for per in shadows)
        assert sum(map(len, shadows)) < 2 * n
        # the shared accounts hold exactly what the shadows' rows say they cost (every
        # reservation settled to its real cost)
        (key,) = [k for k in r.scan_iter(match=prefix + "shadow_spend:*")]
        total = float(r.hget(key, "total"))
        assert total == pytest.approx(sum(spent), abs=1e-9)
        assert float(r.hget(key, "saved:route:auto")) > 0
        capped = sum(_outcome(gw.url, "capped") for gw in gws)
        assert capped == 2 * n - sum(map(len, shadows))
    finally:
        keys = list(r.scan_iter(match=prefix + "*"))
        if keys:
            r.delete(*keys)
        r.close()


def test_a_gateway_whose_redis_is_down_runs_no_shadow(fake_upstream_factory,
                                                       gateway_factory, tmp_path):
    small = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    large = fake_upstream_factory(answer_fn=lambda req: RIGHT)
    db = str(tmp_path / "down.db")
    cfg = route_config(small.url, large.url, db)
    cfg["redis_url"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    cfg["limits"] = {"redis_timeout_s": 0.2}
    gw = gateway_factory(cfg)
    n = 6
    for i in range(n):
        assert ask(gw.url, f"What is {i} plus 9?").status_code == 200
    got = settle(db, 2.0)
    assert len(got) == n and not any(x["shadow_of"] for x in got)
    assert large.app.calls.get("/chat/completions", 0) == 0
    assert _outcome(gw.url, "cap_unavailable") == n


def _outcome(url: str, outcome: str) -> int:
    line = f'margin_shadow_runs_total{{optimization="route:auto",outcome="{outcome}"}}'
    for text in httpx.get(url + "/metrics").text.splitlines():
        if text.startswith(line):
            return int(float(text.split()[-1]))
    return 0
