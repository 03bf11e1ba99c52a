"""When Redis goes away, limits keep working per replica (or refuse with 503 when so
configured), and come back to Redis once it answers again."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from margin.errors import Overloaded
from margin.limits.admission import Admission
from margin.limits.config import LimitsConfig
from margin.limits.ratelimit import Limit
from margin.limits.redis_common import Breaker, make_client
from tests.tcp_proxy import TCPProxy


@pytest.fixture
def proxied_redis(redis_url):
    host_port = redis_url.split("://", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    proxy = TCPProxy(host, int(port)).start()
    # Not restored afterwards: TCPProxy.restore() cannot re-bind while the old listener's
    # accept() is still blocked (reported); recovery is tested on the breaker itself.
    yield proxy, f"redis://127.0.0.1:{proxy.port}/0"


def rpm(n: int) -> list[Limit]:
    return [Limit("k:outage:r", n, 1, "requests", "key rpm")]


def test_falls_back_to_local_windows(proxied_redis):
    proxy, url = proxied_redis
    cfg = LimitsConfig(redis_prefix=f"margin-test-{uuid.uuid4().hex[:8]}:",
                       redis_timeout_s=0.2, redis_retry_after_s=30, replicas=1)

    async def main() -> list:
        client = make_client(url, cfg.redis_timeout_s)
        adm = Admission(cfg, client)
        first = await adm.admit("a", rpm(2), ())
        proxy.cut()
        during = [await adm.admit(f"b{i}", rpm(2), ()) for i in range(3)]
        await client.aclose()
        return [first, during, adm.breaker.failures]

    first, during, failures = asyncio.run(main())
    assert first.shared and first.admitted
    # Per replica now: the local window starts empty, so two pass and the third is refused;
    # the breaker keeps later requests from waiting on Redis at all.
    assert [o.shared for o in during] == [False] * 3
    assert [o.admitted for o in during] == [True, True, False]
    assert failures == 1


def test_breaker_closes_again_after_the_retry_time():
    now = [0.0]
    breaker = Breaker("x", 5.0, clock=lambda: now[0])
    breaker.fail(ConnectionError("down"))
    assert not breaker.closed
    now[0] = 5.1
    assert breaker.closed


def test_reject_mode_answers_503(proxied_redis):
    proxy, url = proxied_redis
    cfg = LimitsConfig(redis_prefix=f"margin-test-{uuid.uuid4().hex[:8]}:",
                       redis_timeout_s=0.2, on_redis_down="refuse")

    async def main() -> None:
        client = make_client(url, cfg.redis_timeout_s)
        adm = Admission(cfg, client)
        assert (await adm.admit("warm", rpm(5), ())).shared  # a pooled connection, then cut
        proxy.cut()
        try:
            with pytest.raises(Overloaded):
                await adm.admit("a", rpm(5), ())
        finally:
            await client.aclose()

    asyncio.run(main())


def test_the_old_on_redis_error_setting_still_reads_as_it_meant():
    assert LimitsConfig(on_redis_error="reject").on_redis_down == "refuse"
    assert LimitsConfig(on_redis_error="local").on_redis_down == "share"
    assert LimitsConfig().on_redis_down == "share"  # the default never overspends
