"""``margin serve --workers N``: N processes answering one port, each with its own event
loop and its own gateway (upstream pools, caches, ledger writer and journal segment).

The parent binds the socket once and hands it to every worker (spawned, not forked: each
worker imports and builds everything itself), so connections wait in one accept queue
and a worker that dies loses only the connections it had accepted. The parent restarts a
worker that dies, passes SIGTERM (or SIGINT) on to all of them as SIGTERM (each drains as
one process would, see ``server.py``) and exits 0 when they all did.

What must be one across workers is shared through Redis (``redis_url`` is required for
N > 1, see ``server.resolve_workers``); the ledger is one database written by every
worker, each row once (ids are unique per process, inserts idempotent on the id).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import uvicorn
from uvicorn._subprocess import get_subprocess
from uvicorn.config import STARTUP_FAILURE

log = logging.getLogger("margin.gateway")

_POLL_S = 0.2


class Workers:
    def __init__(self, config: uvicorn.Config, server: Any, n: int) -> None:
        self.config = config
        self.server = server  # its run() is each worker's entry point (pickled, spawned)
        self.n = n
        self._signal: int | None = None

    def _spawn(self, sockets: list[Any]) -> Any:
        proc = get_subprocess(self.config, target=self.server.run, sockets=sockets)
        proc.start()
        return proc

    def run(self) -> bool:
        sock = self.config.bind_socket()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        procs = [self._spawn([sock]) for _ in range(self.n)]
        ok = True
        while self._signal is None:
            time.sleep(_POLL_S)
            for i, proc in enumerate(procs):
                if proc.is_alive() or self._signal is not None:
                    continue
                proc.join()
                if proc.exitcode == STARTUP_FAILURE:
                    # It would fail the same way again: the config or the port is wrong.
                    log.error("worker %d failed to start; stopping", proc.pid)
                    self._signal, ok = signal.SIGTERM, False
                    break
                log.warning("worker %d exited (%s); starting another", proc.pid, proc.exitcode)
                _forget_live_gauges(proc.pid)
                procs[i] = self._spawn([sock])
        # SIGTERM whatever the parent got: after Ctrl-C the terminal has already sent the
        # workers SIGINT, and a second SIGINT would make them stop without finishing.
        for proc in procs:
            if proc.is_alive():
                proc_signal(proc, signal.SIGTERM)
        for proc in procs:
            proc.join()
            ok = ok and proc.exitcode == 0
        sock.close()
        return ok

    def _on_signal(self, sig: int, frame: Any) -> None:
        if self._signal is None:
            self._signal = sig


def _forget_live_gauges(pid: int) -> None:
    """A killed worker could not take its live gauges (requests in flight) with it."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def proc_signal(proc: Any, sig: int) -> None:
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass
