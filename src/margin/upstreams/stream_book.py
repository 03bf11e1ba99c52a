"""The bookkeeping every HTTP stream reader shares, whatever the wire format.

A reader (OpenAI's SSE, Anthropic's events, Gemini's SSE, Bedrock's event-stream frames)
turns the upstream's bytes into what the client gets; this is what happens around it: a
failure of the connection translated into ``UpstreamError``/``UpstreamTimeout`` with the
status the attempt is recorded with, and — when the stream ends, however it ends — the
deployment's load and health updated, the time spent added, one ``Attempt`` on the call.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import aiohttp
import orjson

from margin.errors import UpstreamError, UpstreamTimeout
from margin.types import Attempt, Call

if TYPE_CHECKING:  # the deployment class lives with the upstream that uses this
    from margin.upstreams.openai_http import HTTPDeployment


class StreamBook:
    """One stream's status, error and chunks handed on, and its settling at the end."""

    __slots__ = ("model_name", "call", "dep", "resp", "t0", "status", "error", "sent")

    def __init__(self, model_name: str, call: Call, dep: HTTPDeployment,
                 resp: aiohttp.ClientResponse, t0: float) -> None:
        self.model_name = model_name
        self.call = call
        self.dep = dep
        self.resp = resp
        self.t0 = t0
        self.status = resp.status
        self.error: str | None = None
        self.sent = 0  # chunks handed on: after the first, a failure is no longer retried

    def refuse(self, message: str) -> UpstreamError:
        """The upstream sent something that is not a stream answer: a 502 attempt."""
        self.status = 502
        return UpstreamError(message)

    @contextmanager
    def reading(self, what: str = "chunk",
                unreadable: tuple[type[BaseException], ...] = (orjson.JSONDecodeError,),
                name_type: bool = False) -> Iterator[None]:
        """Translate what can go wrong while reading into the gateway's errors."""
        label = self.dep.label
        try:
            yield
        except UpstreamError as exc:
            self.error = exc.message
            raise
        except asyncio.TimeoutError:
            self.status, self.error = 504, "stalled mid-stream"
            raise UpstreamTimeout(f"upstream {label} stalled mid-stream") from None
        except aiohttp.ClientError as exc:
            self.status, self.error = 502, f"stream broke: {type(exc).__name__}"
            raise UpstreamError(f"upstream {label} stream broke: "
                                f"{type(exc).__name__}") from None
        except unreadable as exc:
            self.status = 502
            self.error = f"unreadable stream {what}" + (
                f": {type(exc).__name__}" if name_type else "")
            raise UpstreamError(f"upstream {label} sent an unreadable stream {what}") from None

    @property
    def billed(self) -> bool:
        """Tokens streamed before a failure were still generated: they count."""
        return self.error is None or self.sent > 0

    def close(self) -> float:
        """Give the connection back and update the deployment; the time spent (ms)."""
        dep = self.dep
        dep.in_flight -= 1
        self.resp.release()
        elapsed_ms = (time.perf_counter() - self.t0) * 1000
        self.call.result.upstream_ms += elapsed_ms
        if self.error is None:
            dep.observe(elapsed_ms)
        elif self.sent:
            # Failed after bytes went out: the retry loop no longer sees it.
            dep.health.failure()
        return elapsed_ms

    def attempt(self, elapsed_ms: float) -> None:
        """The attempt's record, once the reader has set the call's usage."""
        usage = self.call.result.usage
        billed = self.billed
        self.call.result.attempts.append(Attempt(
            self.model_name, self.dep.label, self.status, elapsed_ms, error=self.error,
            prompt_tokens=usage.prompt_tokens if billed else 0,
            completion_tokens=usage.completion_tokens if billed else 0))
