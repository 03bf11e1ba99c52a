"""``margin bench gateway``: what the gateway costs on the request path.

A fake upstream answers after ``--delay-ms``; wrk drives load directly at it and then
through the gateway, side by side in one run. The gateway runs as one process pinned to
one core (``taskset``), with its ledger and metrics on; wrk and the upstream share the
other core. Every request carries a different prompt, so no cache can answer for the
upstream (``--same-prompt`` measures the exact-cache hit path instead).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import yaml

from margin.bench.report import header, write_section
from margin.procs import free_port, stop, wait_http

_LUA = """
counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  local prompt = SAME and "the same question every time" or ("question number " .. counter .. " from thread " .. tostring(wrk.thread))
  local body = '{"model":"bench","messages":[{"role":"user","content":"' .. prompt .. '"}],"max_tokens":16}'
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
            cpu: str | None) -> WrkResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(f'PATH = "{path}"\nSAME = {"true" if same else "false"}\n' + _LUA)
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


def _start_gateway(src: Path | None, cfg_path: Path, port: int, cpu: str | None,
                   tmp: Path) -> subprocess.Popen:
    """``margin serve`` from this checkout, or from ``src`` (another checkout's src/)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src.resolve())
    proc = subprocess.Popen(_pin([sys.executable, "-m", "margin.cli.main", "serve", "--config",
                                  str(cfg_path), "--port", str(port)], cpu), cwd=tmp, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc,
                  name=f"gateway from {src}" if src else "gateway")
    except Exception:
        stop(proc)
        raise
    return proc


def _measure(gw: subprocess.Popen, port: int, connections: int, duration_s: int, same: bool,
             cpu: str | None) -> tuple[WrkResult, float]:
    """One wrk run through a gateway, with the gateway's CPU milliseconds per request:
    CPU per request bounds one core's throughput and, unlike wall-clock numbers, barely
    moves when other processes share the machine."""
    cpu0 = cpu_s(gw.pid)
    result = run_wrk(f"http://127.0.0.1:{port}", "/v1/chat/completions", connections,
                     duration_s, same, cpu)
    return result, (cpu_s(gw.pid) - cpu0) * 1000 / max(result.requests, 1)


def gateway_json(rows: list, delay_ms: float, duration_s: int, same_prompt: bool) -> dict:
    """The measured cells: per concurrency, straight to the upstream and through the gateway."""
    return {"bench": "gateway", "delay_ms": delay_ms, "duration_s": duration_s,
            "same_prompt": same_prompt,
            "rows": [{"concurrency": c, "direct": asdict(d), "gateway": asdict(v),
                      "gateway_cpu_ms_per_request": cpu_ms} for c, d, v, cpu_ms, _ in rows]}


@click.command("gateway")
@click.option("--delay-ms", default=20.0, show_default=True, help="Fake upstream's answer delay.")
@click.option("--duration-s", default=10, show_default=True, help="Seconds per wrk run.")
@click.option("--concurrency", "concurrency", multiple=True, type=int, default=(1, 32),
              show_default=True)
@click.option("--same-prompt", is_flag=True, help="Every request identical (exact-cache hits).")
@click.option("--baseline-src", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None,
              help="The src/ folder of another checkout of margin (e.g. a git worktree of an "
                   "older commit): its gateway is measured too, in the same run, for a "
                   "side-by-side regression check.")
@click.option("--out", default="docs/benchmarks.md", show_default=True,
              help="Markdown file to update ('-' to only print).")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the measured cells as JSON here (margin plan --replica-bench "
                   "reads it).")
def gateway_bench(delay_ms: float, duration_s: int, concurrency: tuple[int, ...],
                  same_prompt: bool, baseline_src: Path | None, out: str,
                  json_out: Path | None) -> None:
    """Direct vs through-the-gateway throughput and latency, measured with wrk."""
    if not shutil.which("wrk"):
        raise click.UsageError("wrk is not installed (Debian: apt-get install wrk)")
    multi = (os.cpu_count() or 1) >= 2
    gw_cpu, load_cpu = ("0", "1") if multi else (None, None)
    tmp = Path(tempfile.mkdtemp(prefix="margin-bench-"))
    up_port, gw_port = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    try:
        up = subprocess.Popen(_pin([sys.executable, "-m", "margin.bench.fake_upstream",
                                    "--port", str(up_port), "--delay-ms", str(delay_ms)],
                                   load_cpu), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(up)
        wait_http(f"http://127.0.0.1:{up_port}/v1/models", up)
        config = {"models": [{"name": "bench", "provider": "openai",
                              "api_base": f"http://127.0.0.1:{up_port}/v1",
                              "input_cost_per_mtok": 0.15, "output_cost_per_mtok": 0.6}],
                  "ledger": {"url": str(tmp / "bench.db")},
                  "server": {"log_level": "warning"}}
        if not same_prompt:
            config["cache"] = {"exact": {"enabled": False}}
        cfg_path = tmp / "margin.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        gw = _start_gateway(None, cfg_path, gw_port, gw_cpu, tmp)
        procs.append(gw)
        base = base_port = None
        if baseline_src is not None:
            base_port = free_port()
            base = _start_gateway(baseline_src, cfg_path, base_port, gw_cpu, tmp)
            procs.append(base)
        rows = []
        for c in concurrency:
            # warm every path (connections, caches), then measure side by side
            for port in (up_port, gw_port, base_port):
                if port is not None:
                    run_wrk(f"http://127.0.0.1:{port}", "/v1/chat/completions", c, 2,
                            same_prompt, load_cpu)
            direct = run_wrk(f"http://127.0.0.1:{up_port}", "/v1/chat/completions", c,
                             duration_s, same_prompt, load_cpu)
            via, gw_cpu_ms = _measure(gw, gw_port, c, duration_s, same_prompt, load_cpu)
            old = None
            if base is not None:
                old = _measure(base, base_port, c, duration_s, same_prompt, load_cpu)
            rows.append((c, direct, via, gw_cpu_ms, old))
            click.echo(f"c={c}: direct {direct.rps:.0f} rps p50 {direct.p50_ms:.2f} ms | "
                       f"gateway {via.rps:.0f} rps p50 {via.p50_ms:.2f} ms "
                       f"(errors {direct.errors}/{via.errors})"
                       + (f" | baseline {old[0].rps:.0f} rps, {old[1]:.3f} CPU ms/request"
                          if old else ""), err=True)
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
    if baseline_src is not None:
        mode += ", against a baseline"
    cmd = "margin bench gateway" + (" --same-prompt" if same_prompt else "") + (
        f" --delay-ms {delay_ms:g}" if delay_ms != 20 else "") + (
        f" --baseline-src {baseline_src}" if baseline_src is not None else "")
    lines = [f"### Gateway overhead: {mode}", "", header(cmd),
             f"Fake upstream answers after {delay_ms:g} ms. Gateway: one process pinned to one core "
             "(uvicorn + uvloop + httptools), ledger (SQLite) and metrics on; wrk (1 thread) and "
             f"the upstream on the other core; {duration_s} s per run after a 2 s warm-up.", "",
             "| concurrency | direct rps | gateway rps | gateway / direct | direct P50 ms | "
             "gateway P50 ms | added P50 ms | direct P99 ms | gateway P99 ms | "
             "gateway CPU ms / request | one-core capacity rps | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c, d, v, cpu_ms, _ in rows:
        lines.append(f"| {c} | {d.rps:,.0f} | {v.rps:,.0f} | {v.rps / d.rps:.2f}× | "
                     f"{d.p50_ms:.2f} | {v.p50_ms:.2f} | {v.p50_ms - d.p50_ms:+.2f} | "
                     f"{d.p99_ms:.2f} | {v.p99_ms:.2f} | {cpu_ms:.3f} | "
                     f"{1000 / cpu_ms if cpu_ms > 0 else float('nan'):,.0f} | "
                     f"{d.errors + v.errors} |")
    if baseline_src is not None:
        lines += ["", f"Side by side with the gateway from `{baseline_src}`, measured in the same "
                  "run right after this one at each concurrency (same config, same core):", "",
                  "| concurrency | this rps | baseline rps | this / baseline | this P50 ms | "
                  "baseline P50 ms | this CPU ms / request | baseline CPU ms / request | "
                  "CPU this / baseline |", "|---|---|---|---|---|---|---|---|---|"]
        for c, _, v, cpu_ms, (b, b_cpu_ms) in rows:
            lines.append(f"| {c} | {v.rps:,.0f} | {b.rps:,.0f} | {v.rps / b.rps:.2f}× | "
                         f"{v.p50_ms:.2f} | {b.p50_ms:.2f} | {cpu_ms:.3f} | {b_cpu_ms:.3f} | "
                         f"{cpu_ms / b_cpu_ms:.2f}× |")
    load = os.getloadavg()
    lines += ["", f"Load average during the run: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on "
              f"{os.cpu_count()} cores (other work shared the machine when above ~1)."]
    lines += ["", "LiteLLM proxy: " + ("installed but not run by this benchmark." if litellm else
              "not installed on this machine, so not measured side by side.")]
    text = "\n".join(lines)
    click.echo(text)
    if json_out is not None:
        json_out.write_text(json.dumps(gateway_json(rows, delay_ms, duration_s, same_prompt),
                                       indent=1))
    if out != "-":
        section = "gateway-same-prompt" if same_prompt else "gateway"
        write_section(section + ("-vs-baseline" if baseline_src is not None else ""), text, out)
