"""``margin bench batching``: dynamic batching on the local MiniLM, through the gateway.

1. Offline ceiling: the model alone encoding full batches of 1…64 short questions, no server
   (the seed's table: batch size, batch latency, throughput gain, latency penalty).
2. One real ``margin serve`` process on one port serving the same model under one name per
   ``max_batch_size`` (they share one copy of the weights), ledger and metrics on, exact cache
   off (inputs repeat).
3. A closed-loop load generator in a separate process (aiohttp, one request in flight per
   virtual user) at each concurrency, reporting its own CPU use and the server's; mean batch
   size comes from the gateway's ``margin_batch_size`` histogram over the measured window.

Inputs are QQP questions from ``shared/data/semantic-cache`` (generated questions if absent).
Self-hosted cost per 1k requests and per 1M tokens follows from the measured throughput and
``--cpu-hour-usd``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import click
import orjson
import yaml

from margin.bench.lab.loadgen import AiohttpDriver, WrkDriver, ledger_batch_ms, percentile
from margin.bench.report import header, write_section
from margin.procs import ProcessNotReady, free_port, stop, wait_http

_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "semantic-cache"
# A 2-vCPU on-demand cloud VM (e.g. AWS c7i.large, us-east-1, 2025: 0.0893 USD/h).
DEFAULT_CPU_HOUR_USD = 0.0893
RAY_SERVE_RPS_C64 = 110.0  # the reference: @serve.batch(32, 5 ms), one replica, c=64


def load_questions(path: Path, n: int = 4096) -> tuple[list[str], str]:
    """Short real questions (QQP), or generated ones when the data folder is absent."""
    out: list[str] = []
    seen: set[str] = set()
    if path.exists():
        with path.open() as f:
            for line in f:
                row = orjson.loads(line)
                for key in ("text_a", "text_b"):
                    t = str(row.get(key) or "").strip()
                    if t and len(t) <= 200 and t not in seen:
                        seen.add(t)
                        out.append(t)
                if len(out) >= n:
                    return out[:n], f"QQP questions from {path.name}"
    topics = "python taxes cats rain chess bread music stocks tides glass ice trains".split()
    while len(out) < n:
        i = len(out)
        out.append(f"What is the best way to learn about {topics[i % len(topics)]} "
                   f"in {2000 + i % 25} if I have {i % 9 + 1} hours a week?")
    return out, "generated questions (QQP data not found)"


def load_note() -> str:
    """Other work on the machine skews every number here: say how busy it was."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return ""
    return f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} cores"


def load_model(threads: int | None = None, runtime: str = "auto") -> Any:
    from margin.embedding.minilm import EmbedderVariant, LocalEmbedder

    return LocalEmbedder(threads=threads, variant=EmbedderVariant(runtime=runtime))


def offline_ceiling(emb: Any, texts: list[str], sizes: list[int],
                    seconds: float) -> dict[int, dict]:
    """The model alone: sentences per second and batch latency at each batch size."""
    emb.encode(texts[:64])
    out: dict[int, dict] = {}
    for b in sizes:
        times: list[float] = []
        at = 0
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(times) < 3:
            chunk = [texts[(at + i) % len(texts)] for i in range(b)]
            at += b
            t0 = time.perf_counter()
            emb.encode(chunk)  # as the gateway calls it: sorted, in the model's own chunks
            times.append(time.perf_counter() - t0)
        times.sort()
        out[b] = {"batch_ms": 1000 * times[len(times) // 2],
                  "batch_p99_ms": 1000 * times[min(len(times) - 1, round(0.99 * (len(times) - 1)))],
                  "rps": b * len(times) / sum(times)}
    tokens = emb.count_tokens(texts)
    out[0] = {"mean_tokens": sum(tokens) / len(tokens)}
    return out


def run_gateway_cells(texts: list[str], sizes: list[int], concurrency: list[int],
                      max_wait_ms: float, warmup_s: float, duration_s: float,
                      log: Any, threads: int | None = None, client: str = "wrk",
                      probe: Callable[[], float] | None = None, runtime: str = "auto"
                      ) -> list[dict]:
    """One gateway, every (max_batch_size, concurrency) cell. ``probe`` measures the offline
    ceiling; it runs just before each cell at the top concurrency (the server idle), so that
    cell's share of the ceiling compares two measurements taken seconds apart."""
    tmp = Path(tempfile.mkdtemp(prefix="margin-bench-batching-"))
    port = free_port()
    config = {
        "models": [{"name": f"minilm-b{b}", "provider": "sentence-transformers",
                    "cpu_hour_usd": 0.0, "n_threads": threads, "runtime": runtime,
                    "batch": {"max_batch_size": b, "max_wait_ms": max_wait_ms,
                              "max_queue": 4096}} for b in sizes],
        "cache": {"exact": {"enabled": False}},
        "ledger": {"url": str(tmp / "bench.db")},
        "server": {"log_level": "warning"},
    }
    (tmp / "margin.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "margin.cli.main", "serve", "--config",
                               str(tmp / "margin.yaml"), "--port", str(port)], cwd=tmp,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results: list[dict] = []
    driver: Any = None
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", server, 180)
        try:
            driver = WrkDriver(texts, env) if client == "wrk" else AiohttpDriver(texts, env)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
        offset = 0
        for b in sizes:
            for c in concurrency:
                ceiling = probe() if probe is not None and c == max(concurrency) else None
                r = driver.cell({"url": f"http://127.0.0.1:{port}", "model": f"minilm-b{b}",
                                 "concurrency": c, "warmup_s": warmup_s,
                                 "duration_s": duration_s, "server_pid": server.pid,
                                 "offset": offset})
                offset += 997
                r["max_batch_size"] = b
                r["client"] = driver.name
                calls = ledger_batch_ms(str(tmp / "bench.db"), f"minilm-b{b}", r.pop("window"))
                r["batch_calls"] = len(calls)
                r["batch_p99_ms"] = percentile(calls, 99)
                if ceiling is not None:
                    # the machine's speed drifts: the mean of the model alone just before
                    # and just after the cell is its best estimate during the cell
                    after = probe()
                    r["ceiling_before_rps"], r["ceiling_after_rps"] = ceiling, after
                    r["ceiling_rps"] = (ceiling + after) / 2
                results.append(r)
                log(f"b={b:<3} c={c:<3} {r['rps']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
                    f"p99 {r['p99_ms']:7.1f} ms  batch {r['mean_batch']:5.1f}  "
                    f"call {r['batch_ms']:5.1f}/{r['batch_p99_ms']:5.1f} ms  "
                    f"model busy {r['model_busy_pct']:3.0f}%  "
                    f"client {r['client_cpu_pct']:3.0f}% cpu  errors {r['errors']}")
    finally:
        if driver is not None:
            driver.close()
        stop(server)
        shutil.rmtree(tmp, ignore_errors=True)  # the config and the bench's own ledger
    return results


def run_ray_cell(python: str, texts: list[str], concurrency: int, max_batch_size: int,
                 max_wait_ms: float, warmup_s: float, duration_s: float, log: Any) -> dict:
    """The issue's reference, side by side: Ray Serve's ``@serve.batch`` (one replica) serving
    the same model over HTTP, run by ``python`` (which must have ``ray[serve]``), under the
    same closed-loop wrk load as the gateway's cells."""
    import signal

    from margin.bench.gateway import parse_wrk

    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([python, "-m", "margin.bench.ray_serve_app", str(port),
                             str(max_batch_size), str(max_wait_ms)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # Ray's own processes go with it
    url = f"http://127.0.0.1:{port}"
    try:
        # Ray's proxy answers before the deployment is up: wait for a real embedding
        try:
            wait_http(url + "/v1/embeddings", proc, 300, data=b'{"input": "ready?"}',
                      name="Ray Serve")
        except ProcessNotReady as exc:
            # a bench command's failure: one line at the CLI, with Ray's own last words
            raise click.ClickException(exc.message) from None
        driver = WrkDriver(texts, env)
        script = driver.script_for("ray", 0)
        try:
            if warmup_s:
                driver.run_wrk(url, script, concurrency, warmup_s)
            out, _, _ = driver.run_wrk(url, script, concurrency, duration_s)
        finally:
            os.unlink(script)
        w = parse_wrk(out)
        r = {"rps": w.rps, "p50_ms": w.p50_ms, "p99_ms": w.p99_ms, "errors": w.errors,
             "concurrency": concurrency, "max_batch_size": max_batch_size}
        log(f"ray   c={concurrency:<3} {r['rps']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
            f"p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}")
        return r
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # the whole group: Ray's own processes too
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(30)
                break
            except subprocess.TimeoutExpired:
                continue


def _cost(hour_usd: float, rps: float, tokens_per_req: float) -> tuple[float, float]:
    if rps <= 0:
        return float("nan"), float("nan")
    per_req = hour_usd / 3600 / rps
    return per_req * 1000, per_req / tokens_per_req * 1e6


def _bound_cell(r: dict, max_batch: int, concurrency: int, max_wait_ms: float,
                key: str = "batch_ms") -> str:
    """The P99 target, max_wait_ms + two batch times, with the batch time observed in this
    cell (``batch_ms``: the mean; ``batch_p99_ms``: the P99 over its calls). It only applies
    when two batches can hold every client: with smaller batches the queue holds
    concurrency / max_batch_size batches and a request waits for all of them."""
    if 2 * max_batch < concurrency:
        return f"– ({concurrency / max_batch:.0f} batches queued)"
    if r.get(key) is None or r[key] != r[key]:
        return "–"
    bound = max_wait_ms + 2 * r[key]
    return f"{bound:.0f} {'✓' if r['p99_ms'] <= bound else '✗'}"


def render(offline: dict[int, dict], cells: list[dict], sizes: list[int],
           concurrency: list[int], max_wait_ms: float, hour_usd: float, source: str,
           duration_s: float, command: str, load: str = "", ray: dict | None = None) -> str:
    tokens = offline[0]["mean_tokens"]
    base = offline[sizes[0]]
    best_b = max((b for b in sizes), key=lambda b: offline[b]["rps"])
    ceiling = offline[best_b]["rps"]
    lines = ["### Dynamic batching: local MiniLM through the gateway", "", header(command),
             f"Model: all-MiniLM-L6-v2, {offline[0].get('variant', 'torch-fp32')}. "
             f"Inputs: {source} (mean {tokens:.1f} tokens). One `margin serve` process (uvicorn, "
             f"ledger on SQLite, metrics on, exact cache off), one model name per "
             f"`max_batch_size`, `max_wait_ms` {max_wait_ms:g}; a closed-loop load generator "
             f"({cells[0].get('client', 'aiohttp') if cells else '–'}) on the same "
             f"{os.cpu_count()} cores, one request in flight per connection; {duration_s:g} s "
             "per cell after a warm-up. Cost at "
             f"{hour_usd:g} USD per machine-hour. No GPU on this machine."
             + (f" Machine state: {load}." if load else ""), "",
             "**The model alone (offline ceiling, no server)**: the seed's table.", "",
             "| batch size | batch latency P50 ms | P99 ms | sentences/s | throughput gain | "
             "latency penalty |", "|---|---|---|---|---|---|"]
    for b in sizes:
        o = offline[b]
        lines.append(f"| {b} | {o['batch_ms']:.1f} | {o.get('batch_p99_ms', float('nan')):.1f} | "
                     f"{o['rps']:.0f} | "
                     f"{o['rps'] / base['rps']:.1f}× | {o['batch_ms'] / base['batch_ms']:.1f}× |")
    c_top = max(concurrency)
    top = {r["max_batch_size"]: r for r in cells if r["concurrency"] == c_top}
    idle = next((r for r in cells if r["concurrency"] == min(concurrency)
                 and r["max_batch_size"] == sizes[0]), None)
    b1 = top.get(sizes[0])
    lines += ["", f"**Through the gateway at concurrency {c_top}**: % of ceiling against the "
              f"model alone at its best batch ({best_b}), measured just before and just after "
              "each cell, the mean of the two (the machine's speed drifts by ±10 % and more "
              "over minutes); throughput gain against "
              f"`max_batch_size` {sizes[0]} at the same load, latency penalty against one request "
              f"alone (P50 at concurrency {min(concurrency)}, `max_batch_size` {sizes[0]}"
              + (f": {idle['p50_ms']:.1f} ms" if idle else "") + ").", "",
              "| max_batch_size | mean batch | req/s | % of ceiling | throughput gain | P50 ms | "
              "P99 ms | latency penalty (P50) | P99 bound, mean batch ms | P99 bound, P99 batch ms "
              "| USD / 1k req | USD / 1M tokens |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in sizes:
        r = top.get(b)
        if r is None:
            continue
        k, m = _cost(hour_usd, r["rps"], tokens)
        gain = f"{r['rps'] / b1['rps']:.1f}×" if b1 and b1["rps"] else "–"
        pen = f"{r['p50_ms'] / idle['p50_ms']:.1f}×" if idle else "–"
        lines.append(f"| {b} | {r['mean_batch']:.1f} | {r['rps']:.0f} | "
                     f"{100 * r['rps'] / r.get('ceiling_rps', ceiling):.0f} % | {gain} | "
                     f"{r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {pen} | {_bound_cell(r, b, c_top, max_wait_ms)} | "
                     f"{_bound_cell(r, b, c_top, max_wait_ms, 'batch_p99_ms')} | "
                     f"{k:.6f} | {m:.4f} |")
    if top:
        best = max(top.values(), key=lambda r: r["rps"])
        lines += ["", f"Best at concurrency {c_top}: `max_batch_size` {best['max_batch_size']}, "
                  f"{best['rps']:.0f} req/s = "
                  f"{100 * best['rps'] / best.get('ceiling_rps', ceiling):.0f} % of the offline "
                  "ceiling measured around that cell "
                  f"({best.get('ceiling_rps', ceiling):.0f} sentences/s at batch {best_b}"
                  + (f", the mean of {best['ceiling_before_rps']:.0f} just before and "
                     f"{best['ceiling_after_rps']:.0f} just after"
                     if "ceiling_after_rps" in best else "") + "; "
                  f"{ceiling:.0f}/s in the table above; target ≥ 90 %), "
                  + (f"{best['rps'] / ray['rps']:.1f}× Ray Serve measured side by side (below). "
                     if ray and ray["rps"] else
                     f"{best['rps'] / RAY_SERVE_RPS_C64:.1f}× the ~{RAY_SERVE_RPS_C64:.0f} req/s "
                     "the issue reports for Ray Serve on this kind of machine (not re-measured "
                     "here; `--ray-python` measures it). ")
                  + 
                  f"Load generator: {best['client_cpu_pct']:.0f} % of one core; server process: "
                  + (f"{best['server_cpu_pct']:.0f} %" if best.get("server_cpu_pct") else "n/a")
                  + " (200 % = both cores)."]
    if ray:
        lines += ["", f"**Ray Serve, side by side**: `@serve.batch(max_batch_size="
                  f"{ray['max_batch_size']}, batch_wait_timeout_s={max_wait_ms / 1000:g})`, one "
                  "replica, the same model object (`LocalEmbedder`, so the same runtime and "
                  "chunking) called inside the batched method, the same wrk load at concurrency "
                  f"{ray['concurrency']}: **{ray['rps']:.0f} req/s**, P50 {ray['p50_ms']:.1f} ms, "
                  f"P99 {ray['p99_ms']:.1f} ms, {ray['errors']} errors."]
    lines += ["", "With one copy of the model, closed-loop clients settle into one of two "
              "patterns, depending on how the cell starts. Either two alternating batches: "
              "while one runs, the other half of the clients queue, and they leave the moment "
              "the model is free (they have waited longer than `max_wait_ms`), so the batches "
              "hold about concurrency / 2 and the model never idles, but it shares the cores "
              "with the event loop answering and reading the other half. Or one group: batches "
              "of about `max_batch_size` with stray single requests between them, the model "
              "running alone while the clients wait and idling while they turn around. The "
              "mean batch column averages over all calls, singles included. A request waits "
              "for at most about one batch and then rides in the next, hence the P99 bound of "
              "`max_wait_ms` + two batch times. Two readings of \"batch time\", both observed in "
              "that cell: the mean (the model's busy time over the batches it ran, from "
              "`margin_batch_duration_seconds`) and the P99 over its calls (each call's duration, "
              "`notes.batch_ms` in the ledger). Since nearly every request waits for a whole batch "
              "and rides a whole batch, the mean reading is about the *median* latency, and any "
              "spread in batch times (longer questions, the event loop or other processes taking "
              "a core) puts the P99 above it; the P99 reading bounds a request that meets two "
              "slow batches.",
              "", "**Every cell** (closed loop):", "",
              "| max_batch_size | concurrency | req/s | P50 ms | P99 ms | mean batch | "
              "batch ms, mean / P99 | model busy % | client CPU % | server CPU % | errors |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in cells:
        srv = f"{r['server_cpu_pct']:.0f}" if r.get("server_cpu_pct") is not None else "–"
        lines.append(f"| {r['max_batch_size']} | {r['concurrency']} | {r['rps']:.0f} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_batch']:.1f} | "
                     f"{r['batch_ms']:.1f} / {r.get('batch_p99_ms', float('nan')):.1f} | "
                     f"{r['model_busy_pct']:.0f} | {r['client_cpu_pct']:.0f} | {srv} | "
                     f"{r['errors']} |")
    return "\n".join(lines)


def _ints(text: str, name: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}",
                                 param_hint=name) from None
    if not values or min(values) < 1:
        raise click.BadParameter("expected positive integers", param_hint=name)
    return values


@click.command("batching")
@click.option("--concurrency", default="1,8,16,32,64", show_default=True)
@click.option("--batch-sizes", default="1,8,16,32,64", show_default=True,
              help="max_batch_size values (one model name each)")
@click.option("--max-wait-ms", default=5.0, show_default=True, type=click.FloatRange(0))
@click.option("--duration-s", default=5.0, show_default=True, type=click.FloatRange(0.5),
              help="measured seconds per cell")
@click.option("--warmup-s", default=1.0, show_default=True, type=click.FloatRange(0))
@click.option("--offline-s", default=5.0, show_default=True, type=click.FloatRange(0.1),
              help="seconds per batch size for the offline ceiling")
@click.option("--questions", type=click.Path(dir_okay=False, path_type=Path),
              default=_DATA / "qqp_pairs_tune.jsonl", show_default=True)
@click.option("--cpu-hour-usd", default=DEFAULT_CPU_HOUR_USD, show_default=True,
              type=click.FloatRange(0), help="price of this machine per hour")
@click.option("--client", type=click.Choice(["auto", "wrk", "aiohttp"]), default="auto",
              show_default=True, help="load generator: wrk (C) where installed, else aiohttp")
@click.option("--runtime", type=click.Choice(["auto", "torch", "onnx"]), default="auto",
              show_default=True, help="the model's runtime, offline and in the gateway")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="torch threads for the model [default: torch's, one per core]")
@click.option("--ray-python", type=click.Path(dir_okay=False, exists=True), default=None,
              help="a Python with ray[serve] and margin importable: also measure Ray Serve's "
                   "@serve.batch (batch 32) on the same model and load")
@click.option("--out", default="docs/benchmarks.md", show_default=True,
              help="markdown file to update ('-' to only print)")
@click.option("--json", "as_json", is_flag=True, help="print the raw results as JSON")
def batching(concurrency: str, batch_sizes: str, max_wait_ms: float, duration_s: float,
             warmup_s: float, offline_s: float, questions: Path, cpu_hour_usd: float,
             client: str, runtime: str, threads: int | None, ray_python: str | None, out: str,
             as_json: bool) -> None:
    """Throughput and latency of dynamic batching on the local MiniLM, through the gateway."""
    import importlib.util

    if importlib.util.find_spec("sentence_transformers") is None:
        raise click.UsageError("needs the local extra: pip install 'margin[local]'")
    conc, sizes = _ints(concurrency, "--concurrency"), _ints(batch_sizes, "--batch-sizes")
    texts, source = load_questions(questions)
    log = lambda msg: click.echo(msg, err=True)  # noqa: E731
    load_before = load_note()
    log(f"offline ceiling over batch sizes {sizes} … ({load_before})")
    model = load_model(threads, runtime)
    offline = offline_ceiling(model, texts, sorted(set(sizes + [1])), offline_s)
    offline[0]["variant"] = model.variant.label
    for b in sizes:
        log(f"offline b={b:<3} {offline[b]['rps']:6.0f} sentences/s  "
            f"batch {offline[b]['batch_ms']:6.1f} ms")
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "aiohttp"
    best_b = max(sizes, key=lambda b: offline[b]["rps"])

    def probe() -> float:
        rps = offline_ceiling(model, texts, [best_b], offline_s)[best_b]["rps"]
        log(f"offline b={best_b:<3} {rps:6.0f} sentences/s (ceiling probe, around the next cell)")
        return rps

    cells = run_gateway_cells(texts, sizes, conc, max_wait_ms, warmup_s, duration_s, log,
                              threads, client, probe, runtime)
    ray = None
    if ray_python:
        if not shutil.which("wrk"):
            raise click.UsageError("--ray-python needs wrk")
        ray = run_ray_cell(ray_python, texts, max(conc), 32, max_wait_ms, warmup_s, duration_s,
                           log)
    load = f"{load_before} before, {load_note()} after" if load_before else ""
    if as_json:
        click.echo(orjson.dumps({"offline": offline, "cells": cells, "ray": ray},
                                option=orjson.OPT_NON_STR_KEYS).decode())
        return
    parts = ["margin bench batching"]
    if concurrency != "1,8,16,32,64":
        parts.append(f"--concurrency {concurrency}")
    if batch_sizes != "1,8,16,32,64":
        parts.append(f"--batch-sizes {batch_sizes}")
    if duration_s != 5.0:
        parts.append(f"--duration-s {duration_s:g}")
    if runtime != "auto":
        parts.append(f"--runtime {runtime}")
    if threads:
        parts.append(f"--threads {threads}")
    if client != "wrk":
        parts.append(f"--client {client}")
    if ray_python:
        parts.append("--ray-python PYTHON")
    text = render(offline, cells, sizes, conc, max_wait_ms, cpu_hour_usd, source, duration_s,
                  " ".join(parts), load, ray)
    click.echo(text)
    if out != "-":
        write_section("batching", text, out)
