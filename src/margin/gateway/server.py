"""The HTTP server around the app, and how it stops during a rollout.

On SIGTERM the server drains instead of stopping: ``/healthz/ready`` answers 503 at once,
the listener stays open for ``server.drain_delay_s`` (load balancers and Kubernetes
endpoints need a few seconds to notice, and requests they send meanwhile are served),
then it closes; requests and streams in flight get ``server.drain_grace_s`` to finish,
the lifespan shutdown flushes the ledger and its journal, and the process exits 0.
A second SIGTERM, or SIGINT, skips the delay; SIGINT during a drain stops at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from types import FrameType
from typing import Any

import orjson
import uvicorn

from margin import memory
from margin.config import Settings, load_settings
from margin.errors import InputError
from margin.gateway.app import create_app
from margin.gateway.connections import guarded_protocol
from margin.gateway.service import Gateway
from margin.observe.metrics import MULTIPROC_ENV

log = logging.getLogger("margin.gateway")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, gateway: Gateway | None, drain_delay_s: float
                 ) -> None:
        super().__init__(config)
        self.gateway = gateway
        self.drain_delay_s = drain_delay_s
        self._drain_since: float | None = None

    def attach(self, gateway: Gateway) -> None:
        """Workers build their gateway after the server object exists (in the child)."""
        self.gateway = gateway

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's: it re-raises the signal after shutdown, so a clean drain would
        # still exit -15; a drain that finished is a success.
        if self._drain_since is not None or sig == signal.SIGINT:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True
        if self._drain_since is None:
            self._drain_since = time.monotonic()
            if self.gateway is not None:
                self.gateway.draining = True
            log.info("%s: not ready any more; closing the listener in %.1f s, then "
                     "finishing what is in flight", signal.Signals(sig).name,
                     0 if self.should_exit else self.drain_delay_s)

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        # Everything alive once the gateway is up (modules, models, config, pools) lives as
        # long as the process: out of the collector's reach, a full collection no longer
        # walks it, which took tens of ms mid-request (P99 at c=32: 60 -> 30 ms).
        gc.collect()
        gc.freeze()

    def run(self, sockets: Any = None) -> None:
        global _running
        _running = self  # in a worker process: worker_app() attaches its gateway here
        super().run(sockets=sockets)

    async def on_tick(self, counter: int) -> bool:
        # uvicorn ticks every 0.1 s.
        trim_s = self.gateway.settings.server.malloc_trim_interval_s if self.gateway else 0
        if trim_s > 0 and counter % max(1, int(trim_s * 10)) == 0 and counter:
            await asyncio.to_thread(memory.trim)
        since = self._drain_since
        if since is not None and time.monotonic() - since >= self.drain_delay_s:
            self.should_exit = True
        return await super().on_tick(counter)


# -- building and running it ---------------------------------------------------------------
# A worker rebuilds its settings from these (the config path and the command line's
# overrides) rather than from a pickled copy: what it serves is what `margin config check`
# says about the same file.
WORKER_ARGS_ENV = "MARGIN_WORKER_ARGS"
_running: DrainingServer | None = None


def cores_available(cgroup_cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The cores this process may use: its CPU affinity, and in a container its cgroup's
    CPU quota (a pod limited to 2 CPUs on a 64-core node gets 2, not 64)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = open(cgroup_cpu_max).read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit to read
    return n


def resolve_workers(settings: Settings) -> int:
    """The number of worker processes, or an InputError naming the choices."""
    value = settings.server.workers
    n = cores_available() if value == "auto" else int(value)
    if n < 1:
        raise InputError(f"--workers must be 1 or more, or auto (got {n})")
    if n > 1 and not settings.redis_url:
        raise InputError(
            f"--workers {value} needs state shared across processes, and redis_url is not set. "
            "Either set redis_url (rate limits, budgets, key revocations and the semantic "
            "cache are then one across workers), or run --workers 1 and scale with more "
            "replicas behind a load balancer, each with its own limits")
    return n


# Descriptors the gateway needs besides client connections: upstream pools, the ledger,
# Redis, log files.
_SPARE_FILES = 256


def _fit_open_files(max_connections: int) -> int:
    """Raise the open-file limit to fit ``max_connections`` (up to the hard limit) and
    return the connection cap that fits it: past the limit, accept() fails and every new
    connection is reset, where the cap answers them 503."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + _SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft - _SPARE_FILES < max_connections:
        fitted = max(soft - _SPARE_FILES, 16)
        log.warning("open-file limit %d: at most %d connections (server.max_connections "
                    "is %d)", soft, fitted, max_connections)
        return fitted
    return max_connections


def _protocol(settings: Settings) -> type:
    s = settings.server
    return guarded_protocol(s.header_timeout_s, _fit_open_files(s.max_connections),
                            s.max_connections_per_client)


def __getattr__(name: str) -> Any:
    # Workers are spawned with a pickled uvicorn.Config, and the guarded protocol is a class
    # built per settings: the config names this attribute, each worker builds its own
    # (its own connection counts and open-file limit).
    if name == "worker_http":
        args = orjson.loads(os.environ[WORKER_ARGS_ENV])
        return _protocol(load_settings(args["config"], overrides=args["overrides"]))
    raise AttributeError(name)


def _uvicorn_config(app: Any, settings: Settings, workers: int, factory: bool = False
                    ) -> uvicorn.Config:
    s = settings.server
    http: Any = "margin.gateway.server:worker_http" if factory else _protocol(settings)
    return uvicorn.Config(app, host=s.host, port=s.port, loop="uvloop", http=http,
                          lifespan="on", access_log=False, log_level=s.log_level,
                          proxy_headers=False, server_header=False, factory=factory,
                          workers=workers, timeout_graceful_shutdown=int(s.drain_grace_s),
                          timeout_keep_alive=s.keep_alive_timeout_s)  # type: ignore[arg-type]


def serve(settings: Settings, config_path: str | None, overrides: dict[str, Any]) -> bool:
    """Serve until drained; False when the server could not start."""
    workers = resolve_workers(settings)
    s = settings.server
    if workers == 1:
        memory.limit_arenas(s.malloc_arena_max)
        gateway = Gateway(settings)
        server = DrainingServer(_uvicorn_config(create_app(gateway), settings, 1), gateway,
                                s.drain_delay_s)
        server.run()
        return server.started
    from margin.gateway.workers import Workers

    os.environ[WORKER_ARGS_ENV] = orjson.dumps({"config": config_path,
                                                "overrides": overrides}).decode()
    # One /metrics for all workers: each writes its samples to files in this directory and
    # whichever worker is scraped adds them up (prometheus_client's multiprocess mode).
    made_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        made_dir = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="margin-metrics-")
    config = _uvicorn_config("margin.gateway.server:worker_app", settings, workers,
                             factory=True)
    log.info("%d workers on %s:%d", workers, s.host, s.port)
    try:
        return Workers(config, DrainingServer(config, None, s.drain_delay_s), workers).run()
    finally:
        if made_dir is not None:
            shutil.rmtree(made_dir, ignore_errors=True)


def worker_app() -> Any:
    """The app of one worker process (uvicorn calls this in each child)."""
    args = orjson.loads(os.environ[WORKER_ARGS_ENV])
    settings = load_settings(args["config"], overrides=args["overrides"])
    logging.basicConfig(level=settings.server.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    memory.limit_arenas(settings.server.malloc_arena_max)
    gateway = Gateway(settings)
    if _running is not None:
        _running.attach(gateway)
    return create_app(gateway)


def master_key_set(settings: Settings) -> bool:
    return bool(os.environ.get(settings.server.master_key_env))
