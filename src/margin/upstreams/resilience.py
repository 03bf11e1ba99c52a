"""Keeping answers coming when a deployment fails: health with cool-down and probing,
retries with exponential backoff and jitter, and which errors deserve another try.

A deployment's health is a small state machine, driven by the outcomes of real requests
(no background pinging, so an idle gateway sends nothing upstream):

    healthy ──failure──▶ cooling (until now + cooldown) ──time passes──▶ probing
       ▲                                                                 │
       └──────────── success of the one probe request ◀──────────────────┘
                                                     failure ──▶ cooling, cooldown doubled

While cooling, a deployment gets no traffic (unless nothing else is left); after the
cool-down exactly one request goes through as a probe. A failing probe doubles the cool-down
up to ``cooldown_max_s``; a success resets it. Time comes from an injectable clock, so the
machine is tested without sleeping.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from margin.errors import MarginError, UpstreamError, UpstreamStatusError
from margin.types import Response
from margin.upstreams.config import HealthConfig, ResilienceConfig, RetryConfig

Clock = Callable[[], float]


DEFAULT_RESILIENCE = ResilienceConfig()


# -- errors -----------------------------------------------------------------------------
def is_retryable(exc: BaseException) -> bool:
    """True for what another deployment or model might not suffer: 5xx, 429, timeouts,
    refused or broken connections. A 4xx is the request's own fault and is never retried."""
    if isinstance(exc, UpstreamStatusError):
        return exc.retryable
    return isinstance(exc, UpstreamError)


def attempt_status(exc: BaseException) -> int:
    """The status a failed attempt is recorded with (the upstream's own when it sent one)."""
    if isinstance(exc, UpstreamStatusError):
        return exc.upstream_status
    if isinstance(exc, MarginError):
        return exc.status_code
    return 500


def retry_after_s(exc: BaseException) -> float | None:
    value = getattr(exc, "retry_after_s", None)
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


# -- backoff ----------------------------------------------------------------------------
def backoff_s(retry: int, config: RetryConfig, rng: random.Random | None = None) -> float:
    """Delay before retry number ``retry`` (1 = the first retry): base·2^(retry-1), capped,
    then jittered so that many callers retrying at once spread out."""
    if retry < 1:
        return 0.0
    ceiling = min(config.backoff_max_ms, config.backoff_base_ms * (2 ** (retry - 1))) / 1000
    r = (rng or random).random()
    if config.jitter == "full":
        return ceiling * r
    if config.jitter == "equal":
        return ceiling / 2 + ceiling / 2 * r
    return ceiling


# -- health -----------------------------------------------------------------------------
HEALTHY, COOLING, PROBING = "healthy", "cooling", "probing"


@dataclass(slots=True)
class HealthSnapshot:
    state: str
    consecutive_failures: int
    cooldown_s: float
    cooling_until: float | None
    failures: int
    successes: int


class DeploymentHealth:
    """The cool-down/probe state of one deployment (see the module docstring)."""

    def __init__(self, config: HealthConfig | None = None, clock: Clock = time.monotonic) -> None:
        self.config = config or HealthConfig()
        self.clock = clock
        self.consecutive_failures = 0
        self.cooling_until: float | None = None
        self.next_cooldown_s = self.config.cooldown_s
        self.probe_in_flight = False
        self.failures = 0
        self.successes = 0

    def state(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        if self.cooling_until is None:
            return HEALTHY
        return COOLING if now < self.cooling_until else PROBING

    def available(self, now: float | None = None) -> bool:
        """May a request be sent now? Healthy, or cooled down with no probe already out."""
        state = self.state(now)
        return state == HEALTHY or (state == PROBING and not self.probe_in_flight)

    def begin(self, now: float | None = None) -> bool:
        """Note that a request is being sent; True when it is the probe."""
        if self.state(now) == PROBING and not self.probe_in_flight:
            self.probe_in_flight = True
            return True
        return False

    def success(self, probe: bool = False) -> None:
        self.successes += 1
        self.consecutive_failures = 0
        if probe or self.cooling_until is not None:
            self.probe_in_flight = False
            self.cooling_until = None
            self.next_cooldown_s = self.config.cooldown_s

    def failure(self, probe: bool = False, retry_after: float | None = None,
                now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self.failures += 1
        self.consecutive_failures += 1
        honoured = retry_after if retry_after is not None and self.config.honour_retry_after \
            else None
        if honoured is not None:
            honoured = min(honoured, self.config.retry_after_max_s)
        if probe:
            # The way back failed: wait longer before the next probe.
            self.probe_in_flight = False
            cooldown = honoured if honoured is not None else self.next_cooldown_s
            self.next_cooldown_s = min(self.next_cooldown_s * 2, self.config.cooldown_max_s)
        elif self.cooling_until is not None:
            return  # already out of rotation: a request sent earlier (or forced) failed too
        elif self.consecutive_failures >= self.config.failures_to_cool:
            cooldown = honoured if honoured is not None else self.config.cooldown_s
            self.next_cooldown_s = min(self.config.cooldown_s * 2, self.config.cooldown_max_s)
        else:
            return
        self.cooling_until = now + cooldown

    def release_probe(self) -> None:
        """The probe ended without a verdict (cancelled, or a 4xx that says nothing)."""
        self.probe_in_flight = False

    def snapshot(self, now: float | None = None) -> HealthSnapshot:
        return HealthSnapshot(self.state(now), self.consecutive_failures, self.next_cooldown_s,
                              self.cooling_until, self.failures, self.successes)


# -- streams: fall back only before the first byte -----------------------------------------
async def started_stream(stream: AsyncIterator[dict[str, Any]]) -> Response:
    """A streaming ``Response`` whose first chunk has already arrived.

    An error before the first chunk is raised here (so it can be retried or fall back);
    after it, the stream is the client's and errors travel inside it.
    """
    try:
        first = await stream.__anext__()
    except StopAsyncIteration:
        return Response(200, stream=_chain(None, stream))
    except BaseException:
        await stream.aclose()  # type: ignore[attr-defined]
        raise
    return Response(200, stream=_chain(first, stream))


async def _chain(first: dict[str, Any] | None, rest: AsyncIterator[dict[str, Any]]
                 ) -> AsyncIterator[dict[str, Any]]:
    try:
        if first is not None:
            yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
