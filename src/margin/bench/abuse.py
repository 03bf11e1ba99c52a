"""``margin bench abuse``: what hostile or unlucky clients cost the gateway.

One ``margin serve`` (a master key, one key, a fake upstream), three bounded attacks in
turn, each measured from outside:

- **label flood**: requests with invented model names, users and features, half without
  a key, half with one — the size of ``/metrics`` and the time it takes, before and after;
- **secret guessing**: wrong secrets for a real key id from 4 clients — rate, statuses,
  scrypt runs (the gateway's own counter), and a good key's latency meanwhile;
- **slow loris**: connections that send a header line now and then and never finish —
  how many are cut off, how long they lasted, ``/healthz`` latency meanwhile.

``--baseline-src`` runs the same against another checkout's gateway (its ``src``), for
a before/after in one run; what the baseline cannot report is shown as ``n/a``.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import httpx
import yaml

from margin.bench.report import header, write_section
from margin.procs import free_port, stop, wait_http


def _start(src: Path, workdir: Path, up_url: str, master: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cfg = workdir / f"margin-{port}.yaml"
    cfg.write_text(yaml.safe_dump({
        "models": [{"name": "small", "provider": "openai", "api_base": up_url + "/v1",
                    "input_cost_per_mtok": 1.0, "output_cost_per_mtok": 2.0}],
        "ledger": {"url": str(workdir / f"ledger-{port}.db")},
        "cache": {"exact": {"enabled": False}}}))
    env = {**os.environ, "PYTHONPATH": str(src), "MARGIN_MASTER_KEY": master}
    proc = subprocess.Popen([sys.executable, "-m", "margin.cli.main", "serve", "--config",
                             str(cfg), "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", proc, 120, name="gateway")
    return proc, url


def _metrics(url: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    body = httpx.get(url + "/metrics", timeout=120).content
    return len(body), (time.perf_counter() - t0) * 1000


def _label_flood(url: str, key: str, n: int) -> dict[str, str]:
    size0, ms0 = _metrics(url)

    def part(count: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            for i in range(count):
                tag = uuid.uuid4().hex
                headers = {"x-margin-user": "u" + tag, "x-margin-feature": "f" + tag}
                if i % 2:
                    headers["authorization"] = f"Bearer {key}"
                c.post("/v1/chat/completions", headers=headers, json={
                    "model": "m" + tag, "messages": [{"role": "user", "content": tag}]})

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(part, [n // 4] * 4))
    size1, ms1 = _metrics(url)
    return {"/metrics before": f"{size0 / 1024:.1f} KB, {ms0:.0f} ms",
            f"/metrics after {n:,} requests": f"{size1 / 1024:.1f} KB, {ms1:.0f} ms"}


def _secret_guessing(url: str, key: str, n: int) -> dict[str, str]:
    key_id = key.split("-")[1]
    good_ms: list[float] = []
    done = threading.Event()

    def owner() -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while not done.is_set():
                t0 = time.perf_counter()
                c.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                       json={"model": "small", "messages": [{"role": "user", "content": "x"}]})
                good_ms.append((time.perf_counter() - t0) * 1000)
                time.sleep(0.05)

    def part(count: int) -> list[int]:
        with httpx.Client(base_url=url, timeout=30) as c:
            return [c.post("/v1/chat/completions", json={
                "model": "small", "messages": [{"role": "user", "content": "x"}]},
                           headers={"authorization": f"Bearer mk-{key_id}-"
                                                     f"{secrets.token_urlsafe(32)}"}
                           ).status_code for _ in range(count)]

    watcher = threading.Thread(target=owner)
    watcher.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        statuses = [s for p in pool.map(part, [n // 4] * 4) for s in p]
    elapsed = time.perf_counter() - t0
    done.set()
    watcher.join()
    m = re.search(r'margin_events_total\{event="auth_secret_checked"\} ([0-9.e+]+)',
                  httpx.get(url + "/metrics").text)
    counts = ", ".join(f"{s}: {statuses.count(s):,}" for s in sorted(set(statuses)))
    return {f"{n:,} wrong secrets": f"{elapsed:.1f} s ({n / elapsed:,.0f}/s); {counts}",
            "scrypt runs": f"{float(m.group(1)):.0f}" if m else "n/a",
            "the key's owner meanwhile": f"P50 {statistics.median(good_ms):.1f} ms, "
                                         f"max {max(good_ms):.1f} ms ({len(good_ms)} requests)"}


def _slow_loris(url: str, n: int, hold_s: float) -> dict[str, str]:
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for i in range(n):
        s = socket.socket()
        s.bind((f"127.0.{i // 200 + 10}.{i % 200 + 1}", 0))
        s.connect((host, int(port)))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        s.setblocking(False)
        socks.append(s)
    health_ms: list[float] = []
    t0 = time.monotonic()
    closed_at: dict[int, float] = {}
    while time.monotonic() - t0 < hold_s and len(closed_at) < n:
        h0 = time.perf_counter()
        httpx.get(url + "/healthz", timeout=30)
        health_ms.append((time.perf_counter() - h0) * 1000)
        for i, s in enumerate(socks):
            if i in closed_at:
                continue
            try:
                s.recv(1, socket.MSG_PEEK)  # an answer (the 408) or the close: cut off
                closed_at[i] = time.monotonic() - t0
            except BlockingIOError:  # still waiting for the rest of our headers
                try:
                    s.send(b"X-Slow: 1\r\n")
                except OSError:
                    closed_at[i] = time.monotonic() - t0
            except OSError:
                closed_at[i] = time.monotonic() - t0
        time.sleep(0.5)
    for s in socks:
        s.close()
    cut = sorted(closed_at.values())
    return {f"{n} slow-header connections": f"{len(cut)} cut off within {hold_s:.0f} s"
            + (f" (after {cut[0]:.1f}–{cut[-1]:.1f} s)" if cut else ""),
            "/healthz meanwhile": f"P50 {statistics.median(health_ms):.1f} ms, "
                                  f"max {max(health_ms):.1f} ms"}


def _run(src: Path, workdir: Path, up_url: str, requests: int, loris: int,
         hold_s: float) -> dict[str, str]:
    master = "master-" + uuid.uuid4().hex
    proc, url = _start(src, workdir, up_url, master)
    try:
        key = httpx.post(url + "/admin/keys", json={"user": "bench"},
                         headers={"authorization": f"Bearer {master}"}).json()["key"]
        out = _label_flood(url, key, requests)
        out |= _secret_guessing(url, key, requests)
        out |= _slow_loris(url, loris, hold_s)
        return out
    finally:
        stop(proc)


@click.command("abuse")
@click.option("--requests", "n_requests", default=4000, show_default=True,
              help="Requests per flood (label flood, secret guessing).")
@click.option("--loris", default=200, show_default=True, help="Slow-header connections.")
@click.option("--hold-s", default=15.0, show_default=True,
              help="How long the slow connections keep trickling.")
@click.option("--baseline-src", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Another checkout's src/ to measure the same way.")
@click.option("--out", default="docs/benchmarks.md", show_default=True,
              help="Markdown file to update ('-' to only print).")
def abuse(n_requests: int, loris: int, hold_s: float, baseline_src: Path | None,
          out: str) -> None:
    """What hostile clients cost: label floods, secret guessing, slow loris."""
    from margin.bench.fake_upstream import FakeUpstream  # noqa: F401 - fail early if absent

    src = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        up_port = free_port()
        up = subprocess.Popen([sys.executable, "-m", "margin.bench.fake_upstream", "--port",
                               str(up_port)], env={**os.environ, "PYTHONPATH": str(src)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        up_url = f"http://127.0.0.1:{up_port}"
        try:
            wait_http(up_url + "/v1/models", up, 60, name="fake upstream")
            runs = {"this gateway": _run(src, work, up_url, n_requests, loris, hold_s)}
            if baseline_src is not None:
                runs["baseline"] = _run(baseline_src.resolve(), work, up_url, n_requests,
                                        loris, hold_s)
        finally:
            stop(up)
    names = list(runs)
    rows = list(runs[names[0]])
    command = (f"margin bench abuse --requests {n_requests} --loris {loris} --hold-s {hold_s:g}"
               + (f" --baseline-src {baseline_src}" if baseline_src else ""))
    lines = ["### What hostile clients cost\n", header(command),
        "One gateway (default settings: header timeout 10 s; a master key, one API key, "
        "exact cache off) in front of the fake upstream; 4 client threads per flood.\n",
        "| measure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, row in enumerate(rows):
        cells = [list(runs[n].values())[i] if len(runs[n]) > i else "n/a" for n in names]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    markdown = "\n".join(lines) + "\n"
    click.echo(markdown)
    if out != "-":
        write_section("abuse", markdown, out)
