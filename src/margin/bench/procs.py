"""The processes a benchmark starts: a free port, waiting until one answers, stopping it."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.request

import click


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 60, *,
              data: bytes | None = None, name: str | None = None) -> None:
    """Until ``url`` answers (a POST of ``data`` when given, else a GET); a clear CLI error,
    with the last line the process wrote to a piped stderr, if ``proc`` dies or time runs
    out."""
    name = name or f"process for {url}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            last = err.strip().splitlines()[-1:]
            raise click.ClickException(f"{name} exited with {proc.returncode}"
                                       + (f": {last[0]}" if last else ""))
        try:
            req = urllib.request.Request(url, data=data,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5):
                return
        except Exception:
            time.sleep(0.1 if data is None else 1.0)
    raise click.ClickException(f"{name} did not come up in {timeout_s:.0f} s")


def stop(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM (the gateway flushes its ledger on it), then SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
