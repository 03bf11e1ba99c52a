"""``margin bench gateway``: what the gateway costs on the request path.

A fake upstream answers after ``--delay-ms``; wrk drives load directly at it and then
through the gateway, side by side in one run. The gateway runs as one process pinned to
one core (``taskset``), with its ledger and metrics on; wrk and the upstream share the
other core. Every request carries a different prompt, so no cache can answer for the
upstream (``--same-prompt`` measures the exact-cache hit path instead).

``--stream`` asks for SSE streams (wrk times the whole stream); ``--workers N`` serves with
N worker processes (and Redis, which N > 1 needs) pinned to N cores; ``--compare-journal``
runs a second gateway with the ledger's journal off in the same run, and the journal's
own cost per row (``LedgerWriter.submit`` with and without it) is measured in process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from typing import Iterator
from pathlib import Path

import click
import yaml

from margin.bench.report import header, write_section
from margin.bench.ttft import measure_ttft
from margin.procs import free_port, stop, wait_http

_LUA = """
counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  local prompt = SAME and "the same question every time" or ("question number " .. counter .. " from thread " .. tostring(wrk.thread))
  local body = '{"model":"bench","messages":[{"role":"user","content":"' .. prompt .. '"}],"max_tokens":16' .. (STREAM and ',"stream":true' or '') .. '}'
  return wrk.format(nil, PATH, nil, body)
end
"""


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(out: str) -> WrkResult:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict((p, _ms(v, u)) for p, v, u in
               re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M))
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return WrkResult(rps, lat.get("50", float("nan")), lat.get("99", float("nan")), reqs, errors)


def run_wrk(url: str, path: str, connections: int, duration_s: int, same: bool,
            cpu: str | None, stream: bool = False) -> WrkResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(f'PATH = "{path}"\nSAME = {"true" if same else "false"}\n'
                f'STREAM = {"true" if stream else "false"}\n' + _LUA)
        script = f.name
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", script, url]
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", cpu] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    os.unlink(script)
    return parse_wrk(out)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _pin(cmd: list[str], cpu: str | None) -> list[str]:
    return ["taskset", "-c", cpu] + cmd if cpu is not None and shutil.which("taskset") else cmd


def submit_cost_us(journal: bool, rows: int = 5_000, repeats: int = 5) -> float:
    """CPU microseconds one ``LedgerWriter.submit`` costs the request path's thread, with or
    without the journal (a row shaped like a real chat row; median of ``repeats`` runs).
    CPU time of this thread, not wall time: on a shared machine the wall clock also counts
    the moments other processes had the core."""
    import statistics
    import time
    import uuid

    from margin.config import LedgerConfig
    from margin.metering.ledger import LedgerWriter

    base = {"ts": 1.7e9, "endpoint": "chat", "user_id": "user-1", "team": "team-a",
            "feature": "support-chat", "key_id": "k1", "requested_model": "bench",
            "model": "bench", "provider": "openai", "route": None, "status": 200,
            "prompt_tokens": 12, "completion_tokens": 16, "cached_tokens": 0,
            "cost_usd": 1.1e-05, "saved_usd": 0.0, "estimated": 0, "streamed": 0,
            "cache": "miss", "latency_ms": 21.734, "upstream_ms": 20.912, "ttft_ms": None,
            "overhead_ms": 0.822, "stage_ms": '{"parse":0.0121,"auth":0.0013,"resolve":0.0031}',
            "prompt_hash": uuid.uuid4().hex}
    runs = []
    for _ in range(repeats):
        tmp = Path(tempfile.mkdtemp(prefix="margin-journal-"))
        writer = LedgerWriter(LedgerConfig(url=str(tmp / "l.db"), journal=journal,
                                           flush_interval_ms=600_000, batch_size=10 * rows))
        writer.start()
        batch = [{**base, "id": uuid.uuid4().hex} for _ in range(rows)]
        t0 = time.thread_time()
        for row in batch:
            writer.submit(row)
        runs.append((time.thread_time() - t0) / rows * 1e6)
        writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return statistics.median(runs)


@contextlib.contextmanager
def _on_cpus(cpus: str | None) -> Iterator[None]:
    """Run this thread on ``cpus`` ("1", "2-3") for a while (nothing when None)."""
    if cpus is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    first, _, last = cpus.partition("-")
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(range(int(first), int(last or first) + 1)))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _start_gateway(tmp: Path, name: str, config: dict, port: int, cpu: str | None,
                   workers: int, src: Path | None = None) -> subprocess.Popen:
    """``margin serve`` from this checkout, or from ``src`` (another checkout's src/)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src.resolve())
    cfg_path = tmp / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    workdir = tmp / name
    workdir.mkdir()
    cmd = [sys.executable, "-m", "margin.cli.main", "serve", "--config", str(cfg_path),
           "--port", str(port)]
    if workers != 1:  # an older checkout (--baseline-src) may not know the flag
        cmd += ["--workers", str(workers)]
    gw = subprocess.Popen(_pin(cmd, cpu), cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    # /healthz: a baseline checkout may predate the readiness endpoints.
    wait_http(f"http://127.0.0.1:{port}/healthz", gw,
              name=f"gateway from {src}" if src else name)
    return gw


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children (the workers of --workers N)."""
    total = cpu_s(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(_tree_cpu_s(int(c)) for c in children)


def gateway_json(rows: list, delay_ms: float, duration_s: int, same_prompt: bool) -> dict:
    """The measured cells: per concurrency, straight to the upstream and through the gateway."""
    return {"bench": "gateway", "delay_ms": delay_ms, "duration_s": duration_s,
            "same_prompt": same_prompt,
            "rows": [{"concurrency": c, "gateway_variant": name, "direct": asdict(d),
                      "gateway": asdict(v), "gateway_cpu_ms_per_request": cpu_ms}
                     for c, name, d, v, cpu_ms in rows]}


@click.command("gateway")
@click.option("--delay-ms", default=20.0, show_default=True, help="Fake upstream's answer delay.")
@click.option("--duration-s", default=10, show_default=True, help="Seconds per wrk run.")
@click.option("--concurrency", "concurrency", multiple=True, type=int, default=(1, 32),
              show_default=True)
@click.option("--same-prompt", is_flag=True, help="Every request identical (exact-cache hits).")
@click.option("--stream", is_flag=True, help="Streamed answers (SSE), direct and through.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="Gateway worker processes (more than one uses --redis-url).")
@click.option("--redis-url", default="redis://127.0.0.1:6379/0", show_default=True,
              help="Redis for --workers N > 1.")
@click.option("--compare-journal", is_flag=True,
              help="Also run a gateway with the ledger journal off, side by side.")
@click.option("--baseline-src", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None,
              help="The src/ folder of another checkout of margin (e.g. a git worktree of an "
                   "older commit): its gateway is measured too, side by side in the same run.")
@click.option("--out", default="docs/benchmarks.md", show_default=True,
              help="Markdown file to update ('-' to only print).")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the measured cells as JSON here (margin plan --replica-bench "
                   "reads it).")
def gateway_bench(delay_ms: float, duration_s: int, concurrency: tuple[int, ...],
                  same_prompt: bool, stream: bool, workers: int, redis_url: str,
                  compare_journal: bool, baseline_src: Path | None, out: str,
                  json_out: Path | None) -> None:
    """Direct vs through-the-gateway throughput and latency, measured with wrk."""
    if not shutil.which("wrk"):
        raise click.UsageError("wrk is not installed (Debian: apt-get install wrk)")
    cores = os.cpu_count() or 1
    # Pinned when a core is left for wrk and the upstream; otherwise all share every core.
    multi = cores > workers
    gw_cpu, load_cpu = ((f"0-{workers - 1}" if workers > 1 else "0"), f"{workers}-{cores - 1}"
                        ) if multi else (None, None)
    tmp = Path(tempfile.mkdtemp(prefix="margin-bench-"))
    up_port = free_port()
    procs: list[subprocess.Popen] = []
    gateways: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        up = subprocess.Popen(_pin([sys.executable, "-m", "margin.bench.fake_upstream",
                                    "--port", str(up_port), "--delay-ms", str(delay_ms)],
                                   load_cpu), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(up)
        wait_http(f"http://127.0.0.1:{up_port}/v1/models", up)
        config: dict = {"models": [{"name": "bench", "provider": "openai",
                                    "api_base": f"http://127.0.0.1:{up_port}/v1",
                                    "input_cost_per_mtok": 0.15, "output_cost_per_mtok": 0.6}],
                        "ledger": {"url": str(tmp / "bench.db")},
                        "server": {"log_level": "warning", "drain_delay_s": 0}}
        if workers > 1:
            config["redis_url"] = redis_url
        if not same_prompt:
            config["cache"] = {"exact": {"enabled": False}}
        variants = {"gateway": config}
        if compare_journal:
            variants["journal off"] = {**config, "ledger": {"url": str(tmp / "bench-nj.db"),
                                                            "journal": False}}
        if baseline_src is not None:
            # only settings an older checkout knows (its config is as strict as this one)
            variants["baseline"] = {**config, "ledger": {"url": str(tmp / "bench-base.db")},
                                    "server": {"log_level": "warning"}}
        for name, cfg in variants.items():
            port = free_port()
            gw = _start_gateway(tmp, name.replace(" ", "-"), cfg, port, gw_cpu, workers,
                                baseline_src if name == "baseline" else None)
            procs.append(gw)
            gateways[name] = (gw, port)
        rows = []
        path = "/v1/chat/completions"
        for c in concurrency:
            # warm every path (connections, caches), then measure side by side
            run_wrk(f"http://127.0.0.1:{up_port}", path, c, 2, same_prompt, load_cpu, stream)
            for _, port in gateways.values():
                run_wrk(f"http://127.0.0.1:{port}", path, c, 2, same_prompt, load_cpu, stream)
            direct = run_wrk(f"http://127.0.0.1:{up_port}", path, c, duration_s, same_prompt,
                             load_cpu, stream)
            for name, (gw, port) in gateways.items():
                cpu0 = _tree_cpu_s(gw.pid)
                via = run_wrk(f"http://127.0.0.1:{port}", path, c, duration_s, same_prompt,
                              load_cpu, stream)
                # CPU per request is what bounds one core's throughput, and unlike wall-clock
                # numbers it barely moves when other processes share the machine.
                cpu_ms = (_tree_cpu_s(gw.pid) - cpu0) * 1000 / max(via.requests, 1)
                rows.append((c, name, direct, via, cpu_ms))
                click.echo(f"c={c} {name}: direct {direct.rps:.0f} rps p50 {direct.p50_ms:.2f} "
                           f"ms | gateway {via.rps:.0f} rps p50 {via.p50_ms:.2f} ms "
                           f"(errors {direct.errors}/{via.errors})", err=True)
        # What a streaming client notices first, which wrk (timing to the end) hides
        # on wrk's core, like wrk: a client on the gateway's core would take its CPU
        ttfts: dict = {}
        if stream:
            with _on_cpus(load_cpu):
                ttfts = {name: measure_ttft(f"http://127.0.0.1:{up_port}",
                                            f"http://127.0.0.1:{port}")
                         for name, (_, port) in gateways.items()}
        journal_us = (submit_cost_us(True), submit_cost_us(False))
        try:
            litellm = subprocess.run([sys.executable, "-c", "import litellm"],
                                     capture_output=True).returncode == 0
        except OSError:
            litellm = False
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)
    mode = "exact-cache hits (same prompt)" if same_prompt else "cache misses (unique prompts)"
    if stream:
        mode = "streams, " + mode
    if workers > 1:
        mode += f", {workers} workers"
    cmd = "margin bench gateway" + (" --same-prompt" if same_prompt else "") + (
        " --stream" if stream else "") + (f" --workers {workers}" if workers > 1 else "") + (
        " --compare-journal" if compare_journal else "") + (
        f" --delay-ms {delay_ms:g}" if delay_ms != 20 else "") + (
        f" --baseline-src {baseline_src}" if baseline_src is not None else "")
    where = ("one process pinned to one core" if workers == 1 else
             f"{workers} worker processes, Redis shared, "
             + (f"pinned to {workers} cores" if multi else
                f"not pinned: gateway, wrk and upstream share all {cores} cores"))
    lines = [f"### Gateway overhead: {mode}", "", header(cmd),
             f"Fake upstream answers after {delay_ms:g} ms"
             + (" (a stream of 16 chunks, timed to its end)" if stream else "")
             + f". Gateway: {where} (uvicorn + uvloop + httptools), ledger (SQLite, journal on "
             "unless said) and metrics on; wrk (1 thread) and the upstream "
             + ("on the other core" + ("s" if cores - workers > 1 else "") if multi
                else "on the same cores")
             + f"; {duration_s} s per run after a 2 s warm-up.", "",
             "| concurrency | gateway | direct rps | gateway rps | gateway / direct | "
             "direct P50 ms | gateway P50 ms | added P50 ms | direct P99 ms | gateway P99 ms | "
             "gateway CPU ms / request | capacity rps of its cores | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c, name, d, v, cpu_ms in rows:
        lines.append(f"| {c} | {name} | {d.rps:,.0f} | {v.rps:,.0f} | {v.rps / d.rps:.2f}× | "
                     f"{d.p50_ms:.2f} | {v.p50_ms:.2f} | {v.p50_ms - d.p50_ms:+.2f} | "
                     f"{d.p99_ms:.2f} | {v.p99_ms:.2f} | {cpu_ms:.3f} | "
                     f"{workers * 1000 / cpu_ms if cpu_ms > 0 else float('nan'):,.0f} | "
                     f"{d.errors + v.errors} |")
    if ttfts:
        lines += ["", "Time to the first byte of the stream, as the client sees it (P50 of "
                  f"{next(iter(ttfts.values())).requests} requests one at a time, alternating "
                  "direct and through; the client on wrk's core):", "",
                  "| gateway | direct P50 ms | gateway P50 ms | added to TTFT P50 ms |",
                  "|---|---|---|---|"]
        lines += [f"| {name} | {t.direct_p50_ms:.2f} | {t.gateway_p50_ms:.2f} | "
                  f"{t.added_p50_ms:+.2f} |" for name, t in ttfts.items()]
    on_us, off_us = journal_us
    lines += ["", f"Ledger journal on the request path (`LedgerWriter.submit`, CPU time of the "
              f"calling thread, median of 5 × 5,000 rows, fsync never): {on_us:.1f} µs a row "
              f"with the journal, {off_us:.1f} µs without: **{on_us - off_us:.1f} µs** added."]
    load = os.getloadavg()
    lines += ["", f"Load average during the run: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on "
              f"{cores} cores (other work shared the machine when above ~1)."]
    lines += ["", "LiteLLM proxy: " + ("installed but not run by this benchmark." if litellm else
              "not installed on this machine, so not measured side by side.")]
    text = "\n".join(lines)
    click.echo(text)
    if json_out is not None:
        json_out.write_text(json.dumps(gateway_json(rows, delay_ms, duration_s, same_prompt),
                                       indent=1))
    if out != "-":
        section = "gateway" + ("-same-prompt" if same_prompt else "") + (
            "-stream" if stream else "") + (f"-workers{workers}" if workers > 1 else "") + (
            "-vs-baseline" if baseline_src is not None else "")
        write_section(section, text, out)
