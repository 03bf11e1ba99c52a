"""``margin bench soak``: does a gateway's memory stay flat under many unique requests?

One ``margin serve`` with what a production gateway runs — the exact cache, per-user rate
limits, a daily budget on every user, a master key and an API key, the SQLite ledger —
in front of the fake upstream. wrk sends ``--requests`` requests in chunks of ``--every``,
each prompt unique (so every request misses the cache, fills it, and writes a row); after
each chunk the gateway's resident memory, each cache's entries and bytes (from
``/metrics``) and the ledger's queue are read, and RSS once a second during each chunk.
Growth is judged on each chunk's peak RSS after warm-up — the caches full, the rate
limiter's one-minute window too, and a fifth of the run: the target is under 10 %.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import click
import httpx
import yaml

from margin.bench.gateway import parse_wrk
from margin.bench.report import header, write_section
from margin.limits.ratelimit import WINDOW_S
from margin.memory import rss_bytes
from margin.procs import free_port, stop, wait_http

_LUA = """
local n = 0
local done = 0
local limit = tonumber(os.getenv("SOAK_PER_THREAD"))
local seed = os.getenv("SOAK_SEED")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("SOAK_KEY")
request = function()
  n = n + 1
  local body = '{"model":"small","messages":[{"role":"user","content":"soak ' .. seed ..
    ' question ' .. n .. ' of thread ' .. tostring(wrk.thread) .. '"}],"max_tokens":16}'
  return wrk.format(nil, "/v1/chat/completions", nil, body)
end
response = function(status, headers, body)
  done = done + 1
  if done >= limit then wrk.thread:stop() end
end
"""


def _gauges(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=60).text
    out = {}
    for name, label, value in re.findall(
            r'^(margin_cache_entries|margin_cache_bytes|margin_ledger_queue_rows)'
            r'(?:\{cache="(\w+)"\})? ([\d.e+]+)$', text, re.M):
        out[f"{name}:{label}" if label else name] = float(value)
    return out


def _answered(url: str) -> int:
    text = httpx.get(url + "/metrics", timeout=60).text
    return int(sum(float(v) for v in re.findall(r"^margin_requests_total\{[^}]*\} ([\d.e+]+)$",
                                                  text, re.M)))


def _chunk(url: str, key: str, n: int, connections: int, seed: str,
           pid: int) -> tuple[int, int, int]:
    """``n`` more requests: wrk's thread stops issuing them at ``n`` answers, but wrk
    itself only exits at its duration, so it is interrupted (and prints its summary) once
    the gateway has answered them. Also returns the gateway's peak RSS meanwhile (read
    once a second): with periodic ``malloc_trim`` RSS is a sawtooth, and one reading at
    the end of a chunk lands anywhere on it."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_LUA)
        script = f.name
    env = {**os.environ, "SOAK_PER_THREAD": str(n), "SOAK_SEED": seed, "SOAK_KEY": key}
    target = _answered(url) + n
    peak = rss_bytes(pid)
    wrk = subprocess.Popen(["wrk", "-t1", f"-c{connections}", "-d3600s", "--latency", "-s",
                            script, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env)
    try:
        while wrk.poll() is None and _answered(url) < target:
            peak = max(peak, rss_bytes(pid))
            time.sleep(1.0)
    finally:
        wrk.send_signal(signal.SIGINT)
        out, _ = wrk.communicate(timeout=30)
        os.unlink(script)
    r = parse_wrk(out)
    return r.requests, r.errors, max(peak, rss_bytes(pid))


@click.command("soak")
@click.option("--requests", "n_requests", default=500_000, show_default=True,
              help="Unique requests in all.")
@click.option("--every", default=100_000, show_default=True,
              help="Requests between two memory readings.")
@click.option("--connections", default=32, show_default=True)
@click.option("--arena-max", default=None, type=int,
              help="server.malloc_arena_max for the gateway (default: its config default).")
@click.option("--trim-interval-s", default=None, type=float,
              help="server.malloc_trim_interval_s for the gateway (0: never).")
@click.option("--out", default="docs/benchmarks.md", show_default=True,
              help="Markdown file to update ('-' to only print).")
def soak(n_requests: int, every: int, connections: int, arena_max: int | None,
         trim_interval_s: float | None, out: str) -> None:
    """Resident memory per --every unique requests through a fully configured gateway."""
    if not shutil.which("wrk"):
        raise click.UsageError("wrk is not installed (Debian: apt-get install wrk)")
    if every < 1 or n_requests < every:
        raise click.UsageError("--requests must be at least --every (and both positive)")
    tmp = Path(tempfile.mkdtemp(prefix="margin-soak-"))
    master = "master-" + secrets.token_hex(8)
    procs: list[subprocess.Popen] = []
    readings: list[Reading] = []
    errors = 0
    try:
        up_port, gw_port = free_port(), free_port()
        up = subprocess.Popen([sys.executable, "-m", "margin.bench.fake_upstream", "--port",
                               str(up_port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        procs.append(up)
        wait_http(f"http://127.0.0.1:{up_port}/v1/models", up)
        server: dict = {"log_level": "warning", "drain_delay_s": 0}
        if arena_max is not None:
            server["malloc_arena_max"] = arena_max
        if trim_interval_s is not None:
            server["malloc_trim_interval_s"] = trim_interval_s
        cfg = {"models": [{"name": "small", "provider": "openai",
                           "api_base": f"http://127.0.0.1:{up_port}/v1",
                           "input_cost_per_mtok": 1.0, "output_cost_per_mtok": 2.0}],
               "ledger": {"url": str(tmp / "ledger.db")},
               "limits": {"default_user": {"rpm": 10_000_000, "tpm": 10_000_000_000},
                          "budgets": [{"scope": "user", "name": "*", "usd": 1e9,
                                       "period": "day"}]},
               "server": server}
        (tmp / "margin.yaml").write_text(yaml.safe_dump(cfg))
        gw = subprocess.Popen([sys.executable, "-m", "margin.cli.main", "serve", "--config",
                               str(tmp / "margin.yaml"), "--port", str(gw_port)], cwd=tmp,
                              env={**os.environ, "MARGIN_MASTER_KEY": master},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(gw)
        url = f"http://127.0.0.1:{gw_port}"
        wait_http(url + "/healthz", gw, 120, name="gateway")
        r = httpx.post(url + "/admin/keys", headers={"authorization": f"Bearer {master}"},
                       json={"name": "soak", "user": "soak-user"}, timeout=30)
        r.raise_for_status()
        key = r.json()["key"]
        start_rss = rss_bytes(gw.pid)
        readings.append(Reading(0, start_rss, start_rss, _gauges(url), 0.0))
        sent = 0
        t0 = time.monotonic()
        seed = secrets.token_hex(4)
        while sent < n_requests:
            n = min(every, n_requests - sent)
            got, errs, peak = _chunk(url, key, n, connections, f"{seed}-{sent}", gw.pid)
            sent += got
            errors += errs
            readings.append(Reading(sent, rss_bytes(gw.pid), peak, _gauges(url),
                                    time.monotonic() - t0))
            click.echo(f"{sent:,} requests: RSS {readings[-1].rss / 2**20:.1f} MB, peak "
                       f"{peak / 2**20:.1f} MB ({readings[-1].elapsed_s:.0f} s, "
                       f"errors {errors})", err=True)
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)
    text = report(readings, errors, n_requests, every, connections, arena_max, trim_interval_s)
    click.echo(text)
    if out != "-":
        write_section("soak", text, out)


class Reading(NamedTuple):
    sent: int
    rss: int          # at the end of the chunk
    peak_rss: int     # the most during the chunk
    gauges: dict[str, float]
    elapsed_s: float


def warm_up_end(readings: list[Reading], n_requests: int) -> int:
    """The first reading after warm-up: the caches full and the rate limiter's one-minute
    window too (what it holds grows with the request rate for its first minute), and at
    least a fifth of the run (the allocator's heap settles over the first ~100 k requests
    at this rate, long after the bounded structures are full)."""
    return next((i for i, r in enumerate(readings) if i and r.elapsed_s >= WINDOW_S
                 and r.sent >= n_requests / 5), len(readings) - 1)


def growth_pct(readings: list[Reading], warm: int) -> float:
    """Peak RSS of the last chunk against the peak of the chunk ending warm-up."""
    if warm >= len(readings) - 1:
        return float("nan")
    return (readings[-1].peak_rss / readings[warm].peak_rss - 1) * 100


def report(readings: list[Reading], errors: int,
           n_requests: int, every: int, connections: int, arena_max: int | None,
           trim_interval_s: float | None) -> str:
    cmd = f"margin bench soak --requests {n_requests} --every {every}" + (
        f" --arena-max {arena_max}" if arena_max is not None else "") + (
        f" --trim-interval-s {trim_interval_s:g}" if trim_interval_s is not None else "")
    lines = ["### Memory under unique requests (soak)", "", header(cmd),
             "One gateway (exact cache at its defaults: 10,000 entries, 256 MiB; a per-user rate "
             "limit and a daily budget on every user; a master key and one API key; the SQLite "
             f"ledger with its journal) in front of the fake upstream; wrk, {connections} "
             "connections, every prompt unique. RSS is read at the end of each chunk and once "
             "a second during it (the peak).", "",
             "| requests | RSS MB | peak RSS MB | peak vs the end of warm-up | "
             "exact-cache entries | exact-cache MB | ledger queue rows | elapsed s |",
             "|---|---|---|---|---|---|---|---|"]
    warm = warm_up_end(readings, n_requests)
    base = readings[warm].peak_rss
    for i, r in enumerate(readings):
        vs = "warm-up" if i < warm else f"{(r.peak_rss / base - 1) * 100:+.1f} %"
        g = r.gauges
        lines.append(f"| {r.sent:,} | {r.rss / 2**20:.1f} | {r.peak_rss / 2**20:.1f} | {vs} | "
                     f"{g.get('margin_cache_entries:exact', 0):,.0f} | "
                     f"{g.get('margin_cache_bytes:exact', 0) / 2**20:.2f} | "
                     f"{g.get('margin_ledger_queue_rows', 0):,.0f} | {r.elapsed_s:.0f} |")
    growth = growth_pct(readings, warm)
    lines += ["", f"Growth after warm-up (peak RSS of the last chunk against the chunk ending "
              f"warm-up: {WINDOW_S:.0f} s and a fifth of the requests): **{growth:+.1f} %** "
              f"(target under 10 %); errors (non-2xx or socket): {errors}."]
    load = os.getloadavg()
    lines += ["", f"Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}."]
    return "\n".join(lines)
