"""Where a calibrated knob's setting and its verdict counts live: in this process, or in
Redis so that every replica counts the same verdicts and applies the same setting.

Both stores have the same three operations, each atomic: ``load`` (the state, created at
the knob's start value the first time), ``record`` (count one verdict if it was made at
the current version; return the state either way) and ``move`` (compare-and-set on the
version: the one replica whose decision wins changes the setting and resets the counts).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from margin.quality.calibration import Knob, Move, State

_INIT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'value', ARGV[1], 'version', 0, 'changed_at', ARGV[2],
             'judged', 0, 'agreed', 0)
end
"""

LOAD_LUA = _INIT + """
return redis.call('HMGET', KEYS[1], 'value', 'version', 'changed_at', 'judged', 'agreed')
"""

# ARGV: start value, now, version the verdict was made at, agreed (1/0)
RECORD_LUA = _INIT + """
if redis.call('HGET', KEYS[1], 'version') == ARGV[3] then
  redis.call('HINCRBY', KEYS[1], 'judged', 1)
  if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[1], 'agreed', 1) end
end
return redis.call('HMGET', KEYS[1], 'value', 'version', 'changed_at', 'judged', 'agreed')
"""

# ARGV: expected version, new value, now
MOVE_LUA = """
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'value', ARGV[2], 'version', tonumber(ARGV[1]) + 1,
           'changed_at', ARGV[3], 'judged', 0, 'agreed', 0)
return 1
"""


def _state(reply: list[Any]) -> State:
    def text(v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    value, version, changed, judged, agreed = (text(v) for v in reply)
    return State(float(value), int(version), float(changed), int(judged), int(agreed))


class LocalStore:
    def __init__(self) -> None:
        self._states: dict[str, State] = {}

    def _get(self, knob: Knob, now_s: float) -> State:
        return self._states.setdefault(knob.optimization, State(knob.start, 0, now_s))

    async def load(self, knob: Knob, now_s: float) -> State:
        return self._get(knob, now_s)

    async def record(self, knob: Knob, now_s: float, version: int, agreed: bool) -> State:
        s = self._get(knob, now_s)
        if s.version == version:
            s = replace(s, judged=s.judged + 1, agreed=s.agreed + int(agreed))
            self._states[knob.optimization] = s
        return s

    async def move(self, knob: Knob, state: State, move: Move, now_s: float) -> State | None:
        s = self._get(knob, now_s)
        if s.version != state.version:
            return None
        new = State(move.value, s.version + 1, now_s)
        self._states[knob.optimization] = new
        return new


class RedisStore:
    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._load = client.register_script(LOAD_LUA)
        self._record = client.register_script(RECORD_LUA)
        self._move = client.register_script(MOVE_LUA)

    def _key(self, knob: Knob) -> str:
        return f"{self.prefix}calibration:{knob.optimization}"

    async def load(self, knob: Knob, now_s: float) -> State:
        return _state(await self._load(keys=[self._key(knob)], args=[knob.start, now_s]))

    async def record(self, knob: Knob, now_s: float, version: int, agreed: bool) -> State:
        reply = await self._record(keys=[self._key(knob)],
                                   args=[knob.start, now_s, version, 1 if agreed else 0])
        return _state(reply)

    async def move(self, knob: Knob, state: State, move: Move, now_s: float) -> State | None:
        won = await self._move(keys=[self._key(knob)],
                               args=[state.version, move.value, now_s])
        return State(move.value, state.version + 1, now_s) if int(won) else None
