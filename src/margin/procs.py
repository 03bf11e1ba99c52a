"""Processes that benchmarks and tests start: a free port, waiting until one answers,
stopping it. One copy, shared by ``margin bench`` and the test suite."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.request

from margin.errors import MarginError


class ProcessNotReady(MarginError):
    """A started process died, or did not answer in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_output(proc: subprocess.Popen, lines: int) -> str:
    # Whichever stream the caller piped: the gateway logs to stderr, tests merge it into stdout.
    stream = proc.stderr or proc.stdout
    if stream is None:
        return ""
    text = stream.read().decode(errors="replace").strip()
    return "\n".join(text.splitlines()[-lines:])


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout_s: float = 60, *,
              data: bytes | None = None, name: str | None = None,
              output_lines: int = 1) -> None:
    """Until ``url`` answers 2xx (a POST of ``data`` when given, else a GET). Raises
    ``ProcessNotReady`` with the last ``output_lines`` the process wrote to a piped stream
    if ``proc`` dies, or when time runs out."""
    name = name or f"process for {url}"
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = _last_output(proc, output_lines)
            raise ProcessNotReady(f"{name} exited with {proc.returncode}"
                                  + (f": {out}" if out else ""))
        try:
            req = urllib.request.Request(url, data=data,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5):
                return
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.1 if data is None else 1.0)
    raise ProcessNotReady(f"{name} did not come up in {timeout_s:.0f} s ({last})")


def stop(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM (the gateway flushes its ledger on it), then SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
