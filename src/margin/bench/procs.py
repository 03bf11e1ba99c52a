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


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """Until ``url`` answers; a clear CLI error if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except Exception:
            time.sleep(0.1)
    raise click.ClickException(f"{url} did not come up in {timeout_s:.0f} s")


def stop(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM (the gateway flushes its ledger on it), then SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
