"""Time to first token of a stream, as a client sees it: from sending the request to the
first byte of the first event, straight to the upstream and through the gateway.

wrk times a stream to its end, which hides what a streaming client notices first. The
requests here go one at a time on kept-alive connections, alternating between the two
targets so that both see the same load on a shared machine; the client is the same for
both, so its own cost cancels out in the difference.
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass

import httpx


@dataclass(frozen=True, slots=True)
class TTFT:
    direct_p50_ms: float
    gateway_p50_ms: float
    requests: int

    @property
    def added_p50_ms(self) -> float:
        return self.gateway_p50_ms - self.direct_p50_ms


def _first_byte_ms(client: httpx.Client, url: str) -> float:
    body = {"model": "bench", "stream": True, "max_tokens": 16,
            "messages": [{"role": "user", "content": f"ttft {uuid.uuid4().hex}"}]}
    t0 = time.perf_counter()
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        pieces = r.iter_raw()
        for piece in pieces:
            if piece:
                first = time.perf_counter()
                break
        else:
            raise RuntimeError(f"{url} answered a stream with no bytes")
        for _ in pieces:  # read to the end: the connection is reused
            pass
    return (first - t0) * 1000


def measure_ttft(direct_url: str, gateway_url: str, requests: int = 200,
                 warmup: int = 20) -> TTFT:
    """P50 time to the first streamed byte, direct and through, ``requests`` of each."""
    direct: list[float] = []
    via: list[float] = []
    with httpx.Client(timeout=30) as a, httpx.Client(timeout=30) as b:
        for i in range(warmup + requests):
            d = _first_byte_ms(a, direct_url)
            g = _first_byte_ms(b, gateway_url)
            if i >= warmup:
                direct.append(d)
                via.append(g)
    return TTFT(statistics.median(direct), statistics.median(via), requests)
