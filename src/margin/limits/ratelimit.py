"""Requests and tokens per minute over a sliding window, in process or in Redis.

Sliding-window log: every admitted request is an entry (time, weight) and a limit of L
per 60 s admits a request only if the weights of the entries of the last 60 s plus its own
stay within L. Unlike a fixed window (2× at the boundary) or a token bucket whose burst
refills while it is spent (up to about 2× in any 60 s), no 60-second window ever holds
more than L. Memory is one entry per admitted request in the window.

A request is checked against all its limits at once (key, user, team, model; requests and
tokens): either all admit it and it is charged to all, or none is charged. Token limits
are charged the estimated prompt up front; ``adjust`` later corrects the entry to the real
usage (completion included). In Redis the check is one Lua script (with the budget
reservations, see ``margin.limits.admission``) using Redis's clock, so N replicas enforce
one limit.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

from margin.errors import RateLimited

WINDOW_S = 60.0

Kind = Literal["requests", "tokens"]


@dataclass(frozen=True, slots=True)
class Limit:
    key: str       # what is limited, e.g. "k:<key id>:r"
    limit: int     # units per window
    cost: int      # units this request takes now
    kind: Kind
    label: str     # for people: "key 1a2b… requests per minute"


@dataclass(frozen=True, slots=True)
class LimitState:
    limit: Limit
    used: int           # units in the window, this request included when admitted
    reset_s: float      # until the window holds nothing again

    @property
    def remaining(self) -> int:
        return max(self.limit.limit - self.used, 0)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_s: float
    states: tuple[LimitState, ...]
    denied: Limit | None = None


# -- in process --------------------------------------------------------------------------
class _Log:
    __slots__ = ("entries", "total", "by_id")

    def __init__(self) -> None:
        self.entries: collections.deque[list[Any]] = collections.deque()  # [ts, weight, id]
        self.total = 0
        self.by_id: dict[str, list[Any]] = {}

    def purge(self, cutoff: float) -> None:
        entries = self.entries
        while entries and entries[0][0] <= cutoff:
            ts, weight, rid = entries.popleft()
            self.total -= weight
            self.by_id.pop(rid, None)

    def wait_s(self, need: int, now: float, window_s: float) -> float:
        """How long until ``need`` units have left the window."""
        freed = 0
        for ts, weight, _ in self.entries:
            freed += weight
            if freed >= need:
                return ts + window_s - now
        return window_s


class LocalWindows:
    """Sliding windows in this process (the default; exact for one replica)."""

    def __init__(self, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._logs: dict[str, _Log] = {}
        self._calls = 0

    def acquire(self, limits: Sequence[Limit], rid: str) -> Decision:
        now = self.clock()
        cutoff = now - self.window_s
        logs = []
        retry, denied = 0.0, None
        for lim in limits:
            log = self._logs.get(lim.key)
            if log is None:
                log = self._logs[lim.key] = _Log()
            log.purge(cutoff)
            logs.append(log)
            if log.total + lim.cost > lim.limit:
                wait = (self.window_s if lim.cost > lim.limit
                        else log.wait_s(log.total + lim.cost - lim.limit, now, self.window_s))
                if denied is None or wait > retry:
                    retry, denied = wait, lim
        allowed = denied is None
        states = []
        for lim, log in zip(limits, logs):
            if allowed and lim.cost > 0:
                entry = [now, lim.cost, rid]
                log.entries.append(entry)
                log.by_id[rid] = entry
                log.total += lim.cost
            reset = log.entries[-1][0] + self.window_s - now if log.entries else 0.0
            states.append(LimitState(lim, log.total, reset))
        self._calls += 1
        if self._calls % 10_000 == 0:
            self._sweep(cutoff)
        return Decision(allowed, max(retry, 0.0), tuple(states), denied)

    def release(self, keys: Sequence[str], rid: str) -> None:
        """Take back request ``rid``'s charges, made by the last ``acquire`` (a budget
        refused it in the same admission step)."""
        for key in keys:
            log = self._logs.get(key)
            if log is not None and log.entries and log.entries[-1][2] == rid:
                _, weight, _ = log.entries.pop()
                log.total -= weight
                log.by_id.pop(rid, None)

    def adjust(self, keys: Sequence[str], rid: str, delta: int) -> None:
        """Correct request ``rid``'s token charge by ``delta`` on each of ``keys``."""
        if delta == 0:
            return
        now = self.clock()
        for key in keys:
            log = self._logs.get(key)
            if log is None:
                log = self._logs[key] = _Log()
            entry = log.by_id.get(rid)
            if entry is not None:
                new_weight = max(entry[1] + delta, 0)
                log.total += new_weight - entry[1]
                entry[1] = new_weight
            elif delta > 0:  # the first charge already left the window: charge it now
                entry = [now, delta, rid + ":late"]
                log.entries.append(entry)
                log.total += delta

    def _sweep(self, cutoff: float) -> None:
        for key in [k for k, log in self._logs.items()
                    if not log.entries or log.entries[-1][0] <= cutoff]:
            del self._logs[key]


# -- Redis -------------------------------------------------------------------------------
# KEYS: per limit, a sorted set (member: request id, score: ms) and a hash (member ->
# weight, "_t" -> total); only token limits keep weights. The check itself is one script
# with the budget reservations (``margin.limits.admission``).
# KEYS as above; ARGV: window ms, request id, delta.
ADJUST_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local rid = ARGV[2]
local delta = tonumber(ARGV[3])
for i = 1, #KEYS / 2 do
  local z, h = KEYS[2 * i - 1], KEYS[2 * i]
  local w = redis.call('HGET', h, rid)
  if w and redis.call('ZSCORE', z, rid) then
    local nw = math.max(tonumber(w) + delta, 0)
    redis.call('HSET', h, rid, nw)
    redis.call('HINCRBY', h, '_t', nw - tonumber(w))
  elseif delta > 0 then
    local late = rid .. ':late'
    redis.call('ZADD', z, now, late)
    redis.call('HSET', h, late, delta)
    redis.call('HINCRBY', h, '_t', delta)
    redis.call('PEXPIRE', z, window + 1000)
    redis.call('PEXPIRE', h, window + 1000)
  end
end
return 1
"""


class RedisWindows:
    """The same windows in Redis, shared by every replica."""

    def __init__(self, client: Any, prefix: str, window_s: float = WINDOW_S) -> None:
        self.client = client
        self.prefix = prefix + "rl:"
        self.window_ms = int(window_s * 1000)
        self._adjust = client.register_script(ADJUST_LUA)

    def keys(self, keys: Sequence[str]) -> list[str]:
        out = []
        for k in keys:
            out += [f"{self.prefix}{k}:z", f"{self.prefix}{k}:h"]
        return out

    async def adjust(self, keys: Sequence[str], rid: str, delta: int) -> None:
        if delta == 0 or not keys:
            return
        await self._adjust(keys=self.keys(keys), args=[self.window_ms, rid, delta])


def refusal(decision: Decision) -> RateLimited:
    """The 429 for a refused decision, in OpenAI's words, with the usual headers."""
    denied = decision.denied
    assert denied is not None
    hdrs = headers(decision.states)
    retry = max(decision.retry_after_s, 0.001)
    hdrs["retry-after-ms"] = str(int(retry * 1000))
    if denied.cost > denied.limit:
        message = (f"Request too large for {denied.label}: it needs {denied.cost}, "
                   f"the limit is {denied.limit}.")
    else:
        message = (f"Rate limit reached for {denied.label}: limit {denied.limit}. "
                   f"Please try again in {retry:.3g}s.")
    return RateLimited(message, retry_after_s=retry, extra_headers=hdrs)


def format_reset(seconds: float) -> str:
    """OpenAI's duration format for x-ratelimit-reset-*: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 0)}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s"


def headers(states: Sequence[LimitState]) -> dict[str, str]:
    """x-ratelimit-* for the tightest request limit and the tightest token limit."""
    tightest: dict[str, tuple[float, int, LimitState]] = {}
    for s in states:
        lim = s.limit
        remaining = lim.limit - s.used if s.used < lim.limit else 0
        rank = (remaining / lim.limit, remaining)
        best = tightest.get(lim.kind)
        if best is None or rank < best[:2]:
            tightest[lim.kind] = (rank[0], remaining, s)
    out: dict[str, str] = {}
    for kind, (_, remaining, s) in tightest.items():
        out[f"x-ratelimit-limit-{kind}"] = str(s.limit.limit)
        out[f"x-ratelimit-remaining-{kind}"] = str(remaining)
        out[f"x-ratelimit-reset-{kind}"] = format_reset(s.reset_s)
    return out
