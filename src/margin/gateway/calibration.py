"""Online calibration in the gateway: each ``quality.targets`` entry becomes a knob on the
stage that owns the threshold, fed by the shadow runner's verdicts.

The semantic cache's knob is its score threshold; a two-tier route's is the boundary above
which the top tier answers. The setting in force (value and version) goes into every
ledger row's ``notes.calibrated``, so a shadow verdict is counted for the setting its
original request was served at, and ``margin quality`` can tell which setting a row had.
With Redis the state is shared (``quality/calibration_store.py``): the replica whose verdict
triggers a move changes the setting for all; the others adopt it on their next verdict or
refresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from margin.errors import ConfigError
from margin.limits.redis_common import REDIS_ERRORS
from margin.observe.metrics import GatewayMetrics
from margin.quality.calibration import Knob, Rules, State, decide
from margin.quality.calibration_store import LocalStore, RedisStore
from margin.quality.config import QualityConfig
from margin.tasks import TaskSet

log = logging.getLogger("margin.quality")

Apply = Callable[[float], None]


def knobs_for(cfg: QualityConfig, stages: list[Any]) -> dict[str, tuple[Knob, Apply]]:
    """Each target's knob and how to set it, from the built stages; a target naming
    something that has no threshold here is a config error."""
    out: dict[str, tuple[Knob, Apply]] = {}
    by_name = {getattr(s, "name", ""): s for s in stages}
    for name, target in cfg.targets.items():
        if name == "semantic_cache":
            stage = by_name.get("semantic_cache")
            if stage is None:
                raise ConfigError("quality.targets.semantic_cache: the semantic cache is off "
                                  "(cache.semantic.enabled)")
            cache = stage.cache

            def set_cache(v: float, cache: Any = cache) -> None:
                cache.threshold = v

            out[name] = (Knob(name, float(cache.threshold), "higher_is_stricter",
                              target.min_agreement), set_cache)
            continue
        route_name = name[len("route:"):] if name.startswith("route:") else None
        router = by_name.get("router")
        route = router.routes.get(route_name) if router is not None and route_name else None
        if route is None or route.router is None or len(route.config.tiers) != 2:
            raise ConfigError(f"quality.targets.{name}: calibration moves the semantic "
                              "cache's threshold or a two-tier rules or learned route's "
                              "(route:<name>); no such route here")

        def set_route(v: float, route: Any = route) -> None:
            route.boundaries = [v]

        out[name] = (Knob(name, float(route.boundaries[0]), "lower_is_stricter",
                          target.min_agreement), set_route)
    return out


class Calibrations:
    def __init__(self, cfg: QualityConfig, knobs: dict[str, tuple[Knob, Apply]],
                 metrics: GatewayMetrics, redis: Any = None, redis_prefix: str = "margin:",
                 clock: Callable[[], float] = time.time) -> None:
        if knobs and not cfg.shadow.enabled:
            raise ConfigError("quality.targets need shadow evaluation: set "
                              "quality.shadow.enabled")
        c = cfg.calibration
        self.rules = Rules(c.step, c.max_change, c.min_samples, c.min_samples_tighten,
                           c.loosen_after_s)
        self.refresh_s = c.refresh_s
        self.knobs = {name: k for name, (k, _) in knobs.items()}
        self._apply = {name: a for name, (_, a) in knobs.items()}
        self.store = RedisStore(redis, redis_prefix) if redis is not None else LocalStore()
        self.shared = redis is not None
        self.states: dict[str, State] = {}
        self.metrics = metrics
        self.clock = clock
        self.tasks = TaskSet("calibration")
        self._loop: asyncio.Task | None = None
        self._last_warning = -1e9
        if self.knobs:
            metrics.watch_calibration(lambda: {n: s.value for n, s in self.states.items()})

    @property
    def active(self) -> bool:
        return bool(self.knobs)

    async def start(self) -> None:
        for name, knob in self.knobs.items():
            try:
                self._adopt(name, await self.store.load(knob, self.clock()))
            except REDIS_ERRORS as exc:
                self._warn(exc)
                self._adopt(name, State(knob.start, 0, self.clock()))
        if self.shared and self.knobs:
            self._loop = asyncio.get_running_loop().create_task(self._refresh())

    async def aclose(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        await self.tasks.aclose()

    # -- on the request path ---------------------------------------------------------
    def stamp(self, notes: dict[str, Any]) -> None:
        """The settings in force, into a ledger row's notes."""
        if self.states:
            notes["calibrated"] = {n: [s.value, s.version] for n, s in self.states.items()}

    def on_result(self, result: Any) -> None:
        """A finished shadow (``gateway.shadow.ShadowResult``)."""
        knob = self.knobs.get(result.optimization)
        verdict = result.verdict
        if knob is None or verdict is None or verdict.agreement is None:
            return
        seen = (result.calibrated or {}).get(result.optimization)
        if not seen:
            return
        self.tasks.spawn(self._observe(knob, int(seen[1]), bool(verdict.agreement)))

    # -- internals -------------------------------------------------------------------
    async def _observe(self, knob: Knob, version: int, agreed: bool) -> None:
        now = self.clock()
        try:
            state = await self.store.record(knob, now, version, agreed)
            self._adopt(knob.optimization, state)
            move = decide(knob, self.rules, state, now)
            if move is None:
                return
            moved = await self.store.move(knob, state, move, now)
        except REDIS_ERRORS as exc:
            self._warn(exc)
            return
        if moved is not None:
            log.warning("quality: %s threshold %s from %.4f to %.4f: %s", knob.optimization,
                        "tightened" if move.kind == "tighten" else "loosened", state.value,
                        move.value, move.why)
            self.metrics.calibration_changes.labels(knob.optimization, move.kind).inc()
            self._adopt(knob.optimization, moved)

    def _adopt(self, name: str, state: State) -> None:
        current = self.states.get(name)
        # A reply that crossed a newer one on the way back is older: keep the newer.
        if current is None or state.version > current.version or (
                state.version == current.version and state.judged >= current.judged):
            if current is None or current.value != state.value:
                self._apply[name](state.value)
            self.states[name] = state

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            for name, knob in self.knobs.items():
                try:
                    self._adopt(name, await self.store.load(knob, self.clock()))
                except REDIS_ERRORS as exc:
                    self._warn(exc)

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning > 30:
            self._last_warning = now
            log.warning("quality: calibration state unavailable (%s: %s); keeping the "
                        "settings in force", type(exc).__name__, exc)
