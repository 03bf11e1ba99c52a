"""A closed-loop HTTP load generator for embeddings, run as its own process.

``concurrency`` workers each send one request, wait for the answer and send the next, so the
offered load follows the server (a closed loop, as in Ray Serve's batching benchmark). The
process reports its own CPU use, so a run can show that the client was not the bottleneck,
and the server's CPU use over the same window (read from /proc).

It stays up and takes one JSON command per line on stdin (one benchmark cell each), answering
one JSON line on stdout: ``python -m margin.bench.lab.loadgen``.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
from typing import Any

import orjson


def _rusage_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (all its threads), or None off Linux."""
    if not pid:
        return None
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def parse_histogram(text: str, name: str, model: str) -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram for one model label."""
    total = count = 0.0
    label = f'model="{model}"'
    for line in text.splitlines():
        if line.startswith(f"{name}_sum{{") and label in line:
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count{{") and label in line:
            count = float(line.rsplit(" ", 1)[1])
    return total, count


def batch_counters(text: str, model: str) -> tuple[float, float, float]:
    """(inputs, batches, seconds the model was busy) so far, from the gateway's metrics."""
    inputs, batches = parse_histogram(text, "margin_batch_size", model)
    busy_s, _ = parse_histogram(text, "margin_batch_duration_seconds", model)
    return inputs, batches, busy_s


def ledger_batch_ms(db_path: str, model: str, window: tuple[float, float],
                    timeout_s: float = 10.0) -> list[float]:
    """How long each batch call took, from the ledger rows of requests that started in
    ``window`` (``notes.batch_ms``, one value per ``batch_id``), once the writer has
    flushed them."""
    from margin.metering import queries
    from margin.metering.db import connect

    deadline = time.monotonic() + timeout_s
    last = -1
    while True:
        db = connect(db_path)
        try:
            rows = queries.notes(db, queries.Filters(window[0], window[1], model=model))
        finally:
            db.close()
        # the writer flushes every 200 ms: wait until two reads agree
        if len(rows) == last or time.monotonic() > deadline:
            break
        last = len(rows)
        time.sleep(0.5)
    calls: dict[int, float] = {}
    for notes in rows:
        n = orjson.loads(notes) if notes else {}
        if "batch_id" in n and "batch_ms" in n:
            calls[n["batch_id"]] = float(n["batch_ms"])
    return sorted(calls.values())


def percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    k = min(len(sorted_ms) - 1, max(0, round(q / 100 * (len(sorted_ms) - 1))))
    return sorted_ms[k]


async def run_cell(cmd: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    import aiohttp

    base, model = cmd["url"], cmd["model"]
    c, warmup_s, duration_s = int(cmd["concurrency"]), float(cmd["warmup_s"]), float(cmd["duration_s"])
    bodies = [orjson.dumps({"model": model, "input": t}) for t in texts]
    counter = [int(cmd.get("offset", 0))]
    latencies: list[float] = []
    errors = [0]
    phase = {"measure": False, "stop": False}
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=c + 2, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = base + "/v1/embeddings"

        async def worker() -> None:
            while not phase["stop"]:
                body = bodies[counter[0] % len(bodies)]
                counter[0] += 1
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except aiohttp.ClientError:
                    ok = False
                if phase["measure"] and not phase["stop"]:
                    if ok:
                        latencies.append((time.perf_counter() - t0) * 1000)
                    else:
                        errors[0] += 1

        async def metrics() -> str:
            async with session.get(base + "/metrics") as resp:
                return await resp.text()

        tasks = [asyncio.create_task(worker()) for _ in range(c)]
        await asyncio.sleep(warmup_s)
        m0 = batch_counters(await metrics(), model)
        cpu0, srv0, t0 = _rusage_s(), proc_cpu_s(cmd.get("server_pid")), time.perf_counter()
        window_start = time.time()
        phase["measure"] = True
        await asyncio.sleep(duration_s)
        phase["stop"] = True
        wall = time.perf_counter() - t0
        window = (window_start, time.time())
        cpu1, srv1 = _rusage_s(), proc_cpu_s(cmd.get("server_pid"))
        m1 = batch_counters(await metrics(), model)
        await asyncio.gather(*tasks, return_exceptions=True)
    latencies.sort()
    batches = m1[1] - m0[1]
    return {
        "model": model, "concurrency": c, "requests": len(latencies), "errors": errors[0],
        "rps": len(latencies) / wall, "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99), "mean_ms": sum(latencies) / max(1, len(latencies)),
        "mean_batch": (m1[0] - m0[0]) / batches if batches else float("nan"),
        "model_busy_pct": 100 * (m1[2] - m0[2]) / wall,
        "batch_ms": 1000 * (m1[2] - m0[2]) / batches if batches else float("nan"),
        "client_cpu_pct": 100 * (cpu1 - cpu0) / wall,
        "server_cpu_pct": (100 * (srv1 - srv0) / wall
                           if srv0 is not None and srv1 is not None else None),
        "window": window,
    }


def main() -> None:
    texts: list[str] = orjson.loads(sys.stdin.readline())
    run: Any = asyncio.run
    try:
        import uvloop

        run = uvloop.run
    except (ImportError, AttributeError):
        pass
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        result = run(run_cell(orjson.loads(line), texts))
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()


# -- drivers used by `margin bench batching` ---------------------------------------------------
class AiohttpDriver:
    """This module in a child process, one cell per command."""

    name = "aiohttp (Python, separate process)"

    def __init__(self, texts: list[str], env: dict[str, str]) -> None:
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-m", "margin.bench.lab.loadgen"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(orjson.dumps(texts).decode() + "\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the load generator did not start")

    def cell(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(orjson.dumps(cmd).decode() + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the load generator died")
        # JSON has no NaN: an empty cell's percentiles come back as null
        return {k: (float("nan") if v is None and k != "server_cpu_pct" else v)
                for k, v in orjson.loads(line).items()}

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except Exception:
            self.proc.kill()


_WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
counter = OFFSET
request = function()
  counter = counter + 1
  return wrk.format(nil, "/v1/embeddings", nil, bodies[(counter % #bodies) + 1])
end
"""


class WrkDriver:
    """wrk (C, one thread, closed loop: one request in flight per connection). Its CPU time
    comes from the rusage of the finished child."""

    name = "wrk (C, 1 thread, separate process)"

    def __init__(self, texts: list[str], env: dict[str, str]) -> None:
        import shutil

        if not shutil.which("wrk"):
            raise RuntimeError("wrk is not installed")
        self.texts = [t for t in texts if "]==]" not in t]
        self.env = env

    def script_for(self, model: str, offset: int) -> str:
        import tempfile

        bodies = ",\n".join("[==[" + orjson.dumps({"model": model, "input": t}).decode() + "]==]"
                            for t in self.texts)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write("bodies = {\n" + bodies + "\n}\n" + _WRK_LUA.replace("OFFSET", str(offset)))
            return f.name

    def run_wrk(self, url: str, script: str, c: int, seconds: float) -> tuple[str, float, float]:
        import subprocess

        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        # wrk's default 2 s timeout would drop the slow cells (batch 1 under load) entirely
        out = subprocess.run(["wrk", "-t1", f"-c{c}", f"-d{max(1, round(seconds))}s",
                              "--timeout", "60s", "--latency", "-s", script, url],
                             capture_output=True, text=True,
                             check=True, env=self.env).stdout
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return out, cpu, wall

    def cell(self, cmd: dict[str, Any]) -> dict[str, Any]:
        import urllib.request

        from margin.bench.gateway import parse_wrk

        url, model, c = cmd["url"], cmd["model"], int(cmd["concurrency"])
        script = self.script_for(model, int(cmd.get("offset", 0)))

        def metrics() -> tuple[float, float, float]:
            with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
                return batch_counters(r.read().decode(), model)

        def drained(timeout_s: float = 120) -> None:
            # The warm-up's last requests are still being served after wrk hangs up; the
            # measured run must not queue behind them.
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
                    for line in r.read().decode().splitlines():
                        if line.startswith("margin_requests_in_flight "):
                            if float(line.split()[1]) <= 0:
                                return
                time.sleep(0.05)

        try:
            if cmd["warmup_s"]:
                self.run_wrk(url, script, c, float(cmd["warmup_s"]))
                drained()
            m0, srv0 = metrics(), proc_cpu_s(cmd.get("server_pid"))
            window_start = time.time()
            out, cpu, wall = self.run_wrk(url, script, c, float(cmd["duration_s"]))
            window = (window_start, time.time())
            m1, srv1 = metrics(), proc_cpu_s(cmd.get("server_pid"))
        finally:
            os.unlink(script)
        w = parse_wrk(out)
        batches = m1[1] - m0[1]
        return {"model": model, "concurrency": c, "requests": w.requests, "errors": w.errors,
                "rps": w.rps, "p50_ms": w.p50_ms, "p99_ms": w.p99_ms, "mean_ms": float("nan"),
                "mean_batch": (m1[0] - m0[0]) / batches if batches else float("nan"),
                "model_busy_pct": 100 * (m1[2] - m0[2]) / wall,
                "batch_ms": 1000 * (m1[2] - m0[2]) / batches if batches else float("nan"),
                "client_cpu_pct": 100 * cpu / wall,
                "server_cpu_pct": (100 * (srv1 - srv0) / wall
                                   if srv0 is not None and srv1 is not None else None),
                "window": window}

    def close(self) -> None:
        return None
