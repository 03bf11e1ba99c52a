"""A bounded load from client threads, recording what every request got: the gateway's
request id and status, or the error the client saw. Shared by the lifecycle tests."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx


@dataclass
class Outcome:
    status: int | None  # None: the client saw no HTTP answer (connection refused, reset)
    request_id: str | None
    error: str | None = None
    stream_done: bool = False


@dataclass
class Load:
    url: str
    clients: int = 16
    requests_per_client: int = 100
    stream_every: int = 0  # every n-th request of a client streams (0: none)
    headers: dict[str, str] = field(default_factory=dict)
    stop_on_error: bool = True
    pause_s: float = 0.0
    body: Callable[[int, int], dict[str, Any]] | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> "Load":
        for c in range(self.clients):
            t = threading.Thread(target=self._client, args=(c,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def join(self, timeout_s: float = 120) -> "Load":
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0.1))
        assert not any(t.is_alive() for t in self._threads), "load did not finish"
        return self

    def answered(self) -> list[Outcome]:
        """Requests the client got a whole answer to (any status; streams to the end)."""
        with self._lock:
            return [o for o in self.outcomes if o.status is not None and o.error is None]

    def failed(self) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.status != 200 or o.error]

    def _body(self, c: int, i: int, stream: bool) -> dict[str, Any]:
        if self.body is not None:
            body = self.body(c, i)
        else:
            body = {"model": "small", "messages": [
                {"role": "user", "content": f"client {c} request {i} {uuid.uuid4().hex}"}]}
        if stream:
            body["stream"] = True
        return body

    def _client(self, c: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers=self.headers) as client:
            for i in range(self.requests_per_client):
                if self.stop.is_set():
                    return
                stream = bool(self.stream_every) and i % self.stream_every == 0
                outcome = self._one(client, self._body(c, i, stream), stream)
                with self._lock:
                    self.outcomes.append(outcome)
                if outcome.status is None and self.stop_on_error:
                    return
                if self.pause_s:
                    time.sleep(self.pause_s)

    @staticmethod
    def _one(client: httpx.Client, body: dict[str, Any], stream: bool) -> Outcome:
        try:
            if not stream:
                r = client.post("/v1/chat/completions", json=body)
                return Outcome(r.status_code, r.headers.get("x-margin-request-id"))
            with client.stream("POST", "/v1/chat/completions", json=body) as r:
                text = "".join(r.iter_text())
                done = text.rstrip().endswith("data: [DONE]")
                return Outcome(r.status_code, r.headers.get("x-margin-request-id"),
                               None if done or r.status_code != 200 else "stream cut short",
                               done)
        except httpx.HTTPError as exc:
            return Outcome(None, None, f"{type(exc).__name__}: {exc}")
