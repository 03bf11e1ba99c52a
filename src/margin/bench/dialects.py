"""``margin bench dialects``: what translating Messages and Responses onto chat costs.

One gateway (one process pinned to one core, ledger and metrics on, exact cache off) in
front of the fake upstream; wrk sends the same question through ``/v1/chat/completions``,
``/v1/messages`` and ``/v1/responses`` in turn, several rounds interleaved so that other
load on the machine falls on every path alike. Reported per path: P50 and P99 latency,
the gateway's CPU time per request, and both against the chat path. Wall-clock numbers
move with whatever else the machine runs, so the translation itself is also timed in
process (``translation_cost_us``): the exact extra work a dialect request does.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import click
import yaml

from margin.bench.gateway import WrkResult, _pin, cpu_s, parse_wrk
from margin.procs import free_port, stop, wait_http
from margin.bench.report import header, write_section

# Each request a different prompt (no cache can answer), the same parameters in each dialect.
_BODIES = {
    "chat": ("/v1/chat/completions",
             '{"model":"bench","max_tokens":16,"messages":[{"role":"system","content":'
             '"Be brief."},{"role":"user","content":"\' .. prompt .. \'"}]}'),
    "messages": ("/v1/messages",
                 '{"model":"bench","max_tokens":16,"system":"Be brief.","messages":'
                 '[{"role":"user","content":"\' .. prompt .. \'"}]}'),
    "responses": ("/v1/responses",
                  '{"model":"bench","max_output_tokens":16,"instructions":"Be brief.",'
                  '"input":"\' .. prompt .. \'"}'),
}
_LUA = """
counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  local prompt = "question number " .. counter .. " from thread " .. tostring(wrk.thread)
  return wrk.format(nil, "{path}", nil, '{body}')
end
"""


def _chat_answer() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    words = "the quick brown fox jumps over the lazy dog and keeps running".split()
    base = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "bench"}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None}]}]
    chunks += [{**base, "choices": [{"index": 0, "delta": {"content": " " + w},
                                     "finish_reason": None}]} for w in words]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({**base, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 12,
                                                    "total_tokens": 21}})
    payload = {"id": "c", "object": "chat.completion", "created": 0, "model": "bench",
               "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                            "message": {"role": "assistant", "content": " ".join(words)}}],
               "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}}
    return payload, chunks


def translation_cost_us(n: int = 20000) -> dict[str, dict[str, float]]:
    """Microseconds per request of what each path does that the others do not: checking
    and translating the body, and encoding the answer (JSON) or its 15 stream chunks (SSE)."""
    import orjson

    from margin.gateway import validate
    from margin.gateway.dialects.edge import MessagesDialect, ResponsesDialect
    from margin.gateway.streaming import sse
    from margin.types import RequestContext, Response

    payload, chunks = _chat_answer()
    prompt = "question number 1 from thread 1"
    bodies = {
        "chat": {"model": "bench", "max_tokens": 16, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]},
        "messages": {"model": "bench", "max_tokens": 16, "system": "Be brief.",
                     "messages": [{"role": "user", "content": prompt}]},
        "responses": {"model": "bench", "max_output_tokens": 16, "instructions": "Be brief.",
                      "input": prompt},
    }
    dialects = {"messages": MessagesDialect(), "responses": ResponsesDialect(False)}

    def timed(fn: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n * 1e6

    def ctx() -> RequestContext:
        return RequestContext("bench", "chat", {}, {})

    out: dict[str, dict[str, float]] = {}
    for name, body in bodies.items():
        d = dialects.get(name)
        if d is None:
            request = lambda: validate.validate_chat(body)  # noqa: E731
            answer = lambda: None  # noqa: E731 - chat sends the upstream's own bytes on
            stream = lambda: [sse(c) for c in chunks] + [b"data: [DONE]\n\n"]  # noqa: E731
        else:
            def request(d: Any = d, body: dict = body) -> Any:
                return d.to_chat(body, ctx())

            def answer(d: Any = d) -> Any:
                return orjson.dumps(d.answer(Response(200, payload=payload), ctx()))

            def stream(d: Any = d) -> Any:
                c = ctx()
                c.body, c.client_body = bodies["chat"], body
                enc = d.encoder(c)
                return [enc.chunk(ch) for ch in chunks] + [enc.end()]
        out[name] = {"request_us": timed(request), "answer_us": timed(answer),
                     "stream_us": timed(stream) if n else 0.0}
    return out


def _wrk(url: str, dialect: str, connections: int, duration_s: int, cpu: str | None
         ) -> WrkResult:
    path, body = _BODIES[dialect]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_LUA.replace("{path}", path).replace("{body}", body))
        script = f.name
    cmd = _pin(["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s",
                script, url], cpu)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    os.unlink(script)
    return parse_wrk(out)


@click.command("dialects")
@click.option("--delay-ms", default=20.0, show_default=True, help="Fake upstream's answer delay.")
@click.option("--duration-s", default=5, show_default=True, help="Seconds per wrk run.")
@click.option("--rounds", default=3, show_default=True, help="Interleaved runs per dialect.")
@click.option("--concurrency", default=1, show_default=True)
@click.option("--out", default="docs/benchmarks.md", show_default=True,
              help="Markdown file to update ('-' to only print).")
def dialects(delay_ms: float, duration_s: int, rounds: int, concurrency: int, out: str) -> None:
    """Chat vs Messages vs Responses through one gateway, side by side, measured with wrk."""
    if not shutil.which("wrk"):
        raise click.UsageError("wrk is not installed (Debian: apt-get install wrk)")
    multi = (os.cpu_count() or 1) >= 2
    gw_cpu, load_cpu = ("0", "1") if multi else (None, None)
    tmp = Path(tempfile.mkdtemp(prefix="margin-bench-"))
    up_port, gw_port = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    runs: dict[str, list[tuple[WrkResult, float]]] = {d: [] for d in _BODIES}
    try:
        up = subprocess.Popen(_pin([sys.executable, "-m", "margin.bench.fake_upstream",
                                    "--port", str(up_port), "--delay-ms", str(delay_ms)],
                                   load_cpu), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(up)
        wait_http(f"http://127.0.0.1:{up_port}/v1/models", up)
        config = {"models": [{"name": "bench", "provider": "openai",
                              "api_base": f"http://127.0.0.1:{up_port}/v1",
                              "input_cost_per_mtok": 0.15, "output_cost_per_mtok": 0.6}],
                  "ledger": {"url": str(tmp / "bench.db")}, "server": {"log_level": "warning"},
                  "cache": {"exact": {"enabled": False}}}
        cfg_path = tmp / "margin.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        gw = subprocess.Popen(_pin([sys.executable, "-m", "margin.cli.main", "serve", "--config",
                                    str(cfg_path), "--port", str(gw_port)], gw_cpu), cwd=tmp,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(gw)
        url = f"http://127.0.0.1:{gw_port}"
        wait_http(url + "/healthz", gw)
        for dialect in _BODIES:  # warm every path
            _wrk(url, dialect, concurrency, 2, load_cpu)
        for _ in range(rounds):
            for dialect in _BODIES:
                cpu0 = cpu_s(gw.pid)
                result = _wrk(url, dialect, concurrency, duration_s, load_cpu)
                cpu_ms = (cpu_s(gw.pid) - cpu0) * 1000 / max(result.requests, 1)
                runs[dialect].append((result, cpu_ms))
                click.echo(f"{dialect}: p50 {result.p50_ms:.3f} ms, {cpu_ms:.3f} CPU ms/req, "
                           f"errors {result.errors}", err=True)
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)

    def med(dialect: str, pick) -> float:
        return statistics.median(pick(r, c) for r, c in runs[dialect])

    base_p50 = med("chat", lambda r, c: r.p50_ms)
    base_cpu = med("chat", lambda r, c: c)
    cmd = "margin bench dialects" + (f" --delay-ms {delay_ms:g}" if delay_ms != 20 else "")
    lines = ["### Dialects: Messages and Responses against chat", "", header(cmd),
             f"One gateway pinned to one core in front of the fake upstream (answers after "
             f"{delay_ms:g} ms), ledger and metrics on, exact cache off; wrk (1 thread, "
             f"{concurrency} connection(s)) on the other core; {rounds} interleaved runs of "
             f"{duration_s} s per path after a 2 s warm-up; medians over the runs.", "",
             "| path | P50 ms | P99 ms | P50 vs chat ms | gateway CPU ms / request | "
             "CPU vs chat ms | requests | errors |", "|---|---|---|---|---|---|---|---|"]
    for dialect in _BODIES:
        p50 = med(dialect, lambda r, c: r.p50_ms)
        cpu = med(dialect, lambda r, c: c)
        lines.append(f"| {_BODIES[dialect][0]} | {p50:.3f} | "
                     f"{med(dialect, lambda r, c: r.p99_ms):.3f} | {p50 - base_p50:+.3f} | "
                     f"{cpu:.3f} | {cpu - base_cpu:+.3f} | "
                     f"{sum(r.requests for r, _ in runs[dialect]):,} | "
                     f"{sum(r.errors for r, _ in runs[dialect])} |")
    micro = translation_cost_us()
    lines += ["", "The translation alone, timed in process (µs per request, 20,000 runs; "
              "chat's column is the work the chat path does in its place):", "",
              "| path | check + translate request | answer to JSON | 15-chunk stream to SSE | "
              "extra vs chat, JSON answer | extra vs chat, stream |",
              "|---|---|---|---|---|---|"]
    base = micro["chat"]
    for dialect, m in micro.items():
        json_extra = m["request_us"] + m["answer_us"] - base["request_us"] - base["answer_us"]
        stream_extra = m["request_us"] + m["stream_us"] - base["request_us"] - base["stream_us"]
        lines.append(f"| {_BODIES[dialect][0]} | {m['request_us']:.1f} | {m['answer_us']:.1f} | "
                     f"{m['stream_us']:.1f} | {json_extra:+.1f} | {stream_extra:+.1f} |")
    load = os.getloadavg()
    lines += ["", f"Load average during the run: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
              f"on {os.cpu_count()} cores (other work shared the machine when above ~1)."]
    text = "\n".join(lines)
    click.echo(text)
    if out != "-":
        write_section("dialects", text, out)
