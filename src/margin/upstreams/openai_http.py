"""Any OpenAI-compatible HTTP API (OpenAI, vLLM, Ollama, llama.cpp server, TGI …).

One connection pool per deployment, reused by every request: margin's lean HTTP/1.1
client (``upstreams/http1.py``) unless the model sets ``http_client: aiohttp``. The native
provider APIs (subclasses) send through the same ``HTTPDeployment.post``. Upstream errors come
back as ``UpstreamError`` subclasses carrying the upstream's own message.

Several deployments of one model (two API keys, two vLLM servers) share its traffic: each
call goes to the one with the fewest outstanding requests (per unit of ``weight``), the
lower smoothed latency breaking ties. A retryable failure (5xx, 429, timeout, refused
connection) is retried on another deployment after an exponential, jittered backoff, and the
failing deployment cools down until a probe brings it back (``margin.upstreams.resilience``).
A stream is retried only until its first chunk has arrived: after that the client has bytes.
Every call, failed or not, is an ``Attempt`` on the context.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson
from yarl import URL

from margin.upstreams.config import DeploymentConfig, HTTPModelConfig
from margin.upstreams.http1 import HTTPPool
from margin.errors import MarginError, UpstreamError, UpstreamTimeout
from margin.types import Attempt, Call, Response
from margin.metering.tokens import estimate_prompt_tokens, estimate_tokens
from margin.upstreams.base import EmbedResult, Upstream
from margin.upstreams.openai_answers import (MalformedAnswer, check_answer, count,
                                             embeddings_of, error_from)
from margin.upstreams.openai_stream import read_chunks, relay_events
from margin.upstreams.resilience import (DEFAULT_RESILIENCE, Clock, DeploymentHealth,
                                         ResilienceConfig, attempt_status, backoff_s,
                                         is_retryable, retry_after_s, started_stream)

T = TypeVar("T")

_PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}


class HTTPDeployment:
    """One base URL + key, with its own pooled session."""

    def __init__(self, model: HTTPModelConfig, dep: DeploymentConfig,
                 health: DeploymentHealth | None = None) -> None:
        self.model = model
        self.dep = dep
        self.base = dep.api_base.rstrip("/")
        self.label = self.base
        self.weight = dep.weight if dep.weight > 0 else 1.0
        self.health = health or DeploymentHealth()
        self.upstream_model = dep.upstream_model or model.upstream_model or model.name
        key = os.environ.get(dep.api_key_env, "") if dep.api_key_env else ""
        self._headers = {"content-type": "application/json"}
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        self._session: aiohttp.ClientSession | None = None
        self._pool: HTTPPool | None = None
        parts = urlsplit(self.base)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self.in_flight = 0
        self.ewma_latency_ms = 0.0

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.model.max_connections,
                                             keepalive_timeout=60, ttl_dns_cache=300)
            timeout = aiohttp.ClientTimeout(total=None, connect=self.model.connect_timeout_s,
                                            sock_read=self.model.timeout_s)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout,
                                                  headers=self._headers,
                                                  json_serialize=lambda o: orjson.dumps(o).decode(),
                                                  skip_auto_headers=("User-Agent",))
        return self._session

    def pool(self) -> HTTPPool:
        if self._pool is None or self._pool.closed:
            self._pool = HTTPPool(self.base, max_connections=self.model.max_connections,
                                  connect_timeout_s=self.model.connect_timeout_s,
                                  read_timeout_s=self.model.timeout_s, headers=self._headers)
        return self._pool

    async def post(self, url: str, data: bytes, headers: dict[str, str] | None = None) -> Any:
        """POST to ``url`` (on this deployment's origin, sent exactly as given) with the
        client the model chose; ``headers`` on top of the deployment's own."""
        if self.model.http_client == "margin" and url.startswith(self._origin):
            return await self.pool().post(url[len(self._origin):] or "/", data, headers)
        return await self.session().post(URL(url, encoded=True), data=data, headers=headers)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._pool is not None:
            await self._pool.close()

    def observe(self, latency_ms: float) -> None:
        self.ewma_latency_ms = (latency_ms if self.ewma_latency_ms == 0
                                else 0.8 * self.ewma_latency_ms + 0.2 * latency_ms)

    def load_key(self) -> tuple[float, float]:
        """Least outstanding requests per unit of weight; smoothed latency breaks ties."""
        return (self.in_flight / self.weight, self.ewma_latency_ms)


class NoDeploymentAvailable(UpstreamError):
    """Every deployment of the model is cooling down; the caller may try another model."""

    code = "no_deployment_available"


class OpenAIHTTPUpstream(Upstream):
    """Speaks to one or more deployments of one model; picks the least busy, retries on
    another when one fails, and keeps failing ones cooling (see the module docstring)."""

    config_class = HTTPModelConfig
    # An OpenAI-compatible API takes a list of inputs (embeddings) or prompts (completions)
    batchable_embeddings = True
    batchable_completions = True
    model: HTTPModelConfig
    # A native API's deployment (its own auth headers) subclasses HTTPDeployment.
    deployment_class: type[HTTPDeployment] = HTTPDeployment

    def __init__(self, model: HTTPModelConfig, resilience: ResilienceConfig | None = None,
                 clock: Clock = time.monotonic, rng: random.Random | None = None) -> None:
        super().__init__(model)
        self.clock = clock
        self.rng = rng or random.Random()
        self.resilience = resilience or DEFAULT_RESILIENCE
        self.deployments = [self.deployment_class(model, d,
                                                  DeploymentHealth(self.resilience.health, clock))
                            for d in model.deployments]
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def configure(self, resilience: ResilienceConfig) -> None:
        """Apply retry and health settings (before traffic; health state starts afresh)."""
        self.resilience = resilience
        for d in self.deployments:
            d.health = DeploymentHealth(resilience.health, self.clock)

    async def aclose(self) -> None:
        await asyncio.gather(*(d.aclose() for d in self.deployments))

    # -- choosing a deployment ---------------------------------------------------------
    def available(self) -> bool:
        """Is any deployment in rotation (healthy, or due for its probe)?"""
        now = self.clock()
        return any(d.health.available(now) for d in self.deployments)

    def pick(self, exclude: set[int] | None = None, *, force: bool = True
             ) -> HTTPDeployment | None:
        """The least loaded deployment in rotation, outside ``exclude``.

        With none in rotation, ``force`` returns the one whose cool-down ends first (a
        request is better sent to a suspect server than refused), else None.
        """
        now = self.clock()
        pool = [d for i, d in enumerate(self.deployments) if not exclude or i not in exclude]
        ready = [d for d in pool if d.health.available(now)]
        if ready:
            return min(ready, key=HTTPDeployment.load_key)
        if force and pool:
            return min(pool, key=lambda d: (d.health.cooling_until or 0.0, d.load_key()))
        return None

    def _next(self, tried: set[int], attempt: int, last_resort: bool) -> HTTPDeployment | None:
        if attempt == 0:
            return self.pick(force=last_resort)
        dep = self.pick(tried, force=False)
        if dep is None and last_resort and self.resilience.retry.retry_same_deployment_last:
            dep = self.pick(force=True)
        return dep

    async def _with_retries(self, call: Callable[[HTTPDeployment], Awaitable[T]],
                            last_resort: bool) -> T:
        retry = self.resilience.retry
        tried: set[int] = set()
        last_exc: BaseException | None = None
        for attempt in range(retry.max_attempts):
            dep = self._next(tried, attempt, last_resort)
            if dep is None:
                break
            if attempt:
                await self.sleep(backoff_s(attempt, retry, self.rng))
            tried.add(self.deployments.index(dep))
            probe = dep.health.begin()
            try:
                result = await call(dep)
            except MarginError as exc:
                if not is_retryable(exc):
                    dep.health.release_probe()
                    raise
                dep.health.failure(probe, retry_after_s(exc))
                last_exc = exc
                continue
            except BaseException:
                dep.health.release_probe()
                raise
            dep.health.success(probe)
            return result
        if last_exc is not None:
            raise last_exc
        raise NoDeploymentAvailable(f"every deployment of {self.model.name!r} is cooling down")

    def _body(self, call: Call, dep: HTTPDeployment) -> dict[str, Any]:
        body = dict(call.body)
        body["model"] = dep.upstream_model
        if (call.stream and call.endpoint in ("chat", "completions")
                and self.model.supports_stream_usage):
            opts = dict(body.get("stream_options") or {})
            opts["include_usage"] = True
            body["stream_options"] = opts
        return body

    async def _post(self, dep: HTTPDeployment, endpoint: str, body: dict[str, Any]
                    ) -> aiohttp.ClientResponse:
        try:
            return await dep.post(dep.base + _PATHS[endpoint], orjson.dumps(body))
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"upstream {dep.label} did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream {dep.label} unreachable: {type(exc).__name__}") from None

    # -- chat and completions ----------------------------------------------------------
    async def complete(self, call: Call, dep: HTTPDeployment | None = None) -> Response:
        """Answer through one deployment (``dep``) or the best one, retrying on others.

        Not the last resort (``call.last_resort`` False: another model comes after this one
        in the fallback chain): never send to a cooling deployment and never retry one
        already tried; the caller moves on instead.
        """
        if dep is not None:
            return await self._complete_once(call, dep)
        return await self._with_retries(lambda d: self._complete_once(call, d),
                                        call.last_resort)

    async def _complete_once(self, call: Call, dep: HTTPDeployment) -> Response:
        body = self._body(call, dep)
        t0 = time.perf_counter()
        dep.in_flight += 1
        try:
            resp = await self._post(dep, call.endpoint, body)
        except MarginError as exc:
            dep.in_flight -= 1
            self._failed(call, dep, t0, exc)
            raise
        except BaseException:
            dep.in_flight -= 1
            raise
        if resp.status >= 400 or not call.stream:
            try:
                raw = await resp.read()
            except asyncio.TimeoutError:
                exc: UpstreamError = UpstreamTimeout(f"upstream {dep.label} timed out mid-answer")
                self._failed(call, dep, t0, exc)
                raise exc from None
            except aiohttp.ClientError as err:
                exc = UpstreamError(f"upstream {dep.label} failed mid-answer: "
                                    f"{type(err).__name__}")
                self._failed(call, dep, t0, exc)
                raise exc from None
            finally:
                dep.in_flight -= 1
                resp.release()
            elapsed_ms = (time.perf_counter() - t0) * 1000
            call.result.upstream_ms += elapsed_ms
            if resp.status >= 400:
                call.result.attempts.append(Attempt(self.model.name, dep.label, resp.status, elapsed_ms,
                                            error=raw[:200].decode("utf-8", "replace")))
                raise error_from(resp.status, raw, resp.headers.get("retry-after"))
            try:
                payload = orjson.loads(raw)
                self._check_payload(payload)
                dep.observe(elapsed_ms)
                self._record_usage(call, payload.get("usage"), payload)
            except (orjson.JSONDecodeError, MalformedAnswer) as err:
                why = (err.message if isinstance(err, MalformedAnswer)
                       else "invalid JSON")
                call.result.attempts.append(Attempt(self.model.name, dep.label, 502, elapsed_ms,
                                            error=why[:200]))
                raise UpstreamError(f"upstream {dep.label} answered with {why}") from None
            call.result.attempts.append(Attempt(self.model.name, dep.label, resp.status, elapsed_ms,
                                        prompt_tokens=call.result.usage.prompt_tokens,
                                        completion_tokens=call.result.usage.completion_tokens))
            return Response(200, payload=payload, raw=raw)
        # Wait for the first chunk here, so that a stream failing before its first byte is
        # retried like any other failed call.
        return await started_stream(self._stream(call, dep, resp, t0))

    def _check_payload(self, payload: Any) -> None:
        """What the gateway reads of the answer has the right shape (a native provider's
        subclass checks its own wire format)."""
        check_answer(payload)

    def _failed(self, call: Call, dep: HTTPDeployment, t0: float,
                exc: MarginError) -> None:
        elapsed_ms = (time.perf_counter() - t0) * 1000
        call.result.upstream_ms += elapsed_ms
        call.result.attempts.append(Attempt(self.model.name, dep.label, attempt_status(exc), elapsed_ms,
                                    error=exc.message[:200]))

    def _record_usage(self, call: Call, usage: Any, payload: dict | None) -> None:
        if isinstance(usage, dict) and "prompt_tokens" in usage:
            details = usage.get("prompt_tokens_details") or {}
            thinking = usage.get("completion_tokens_details") or {}
            if not isinstance(details, dict) or not isinstance(thinking, dict):
                raise MalformedAnswer("a malformed body: 'usage.prompt_tokens_details' or "
                                      "'usage.completion_tokens_details' is not an object")
            call.result.set_usage(count(usage, "prompt_tokens"),
                                  count(usage, "completion_tokens"),
                                  count(details, "cached_tokens"),
                                  cache_write_tokens=count(details, "cache_write_tokens"),
                                  reasoning_tokens=count(thinking, "reasoning_tokens"))
            return
        text = ""
        for choice in (payload or {}).get("choices") or []:
            msg = choice.get("message") or {}
            text += str(msg.get("content") or choice.get("text") or "")
        call.result.set_usage(estimate_prompt_tokens(call.body), estimate_tokens(text),
                              estimated=True)

    def _stream(self, call: Call, dep: HTTPDeployment, resp: aiohttp.ClientResponse,
                t0: float) -> AsyncIterator[dict[str, Any] | bytes]:
        """The chunks as dicts, or the upstream's bytes when the client takes them as they
        are (a native provider's subclass reads its own wire format)."""
        if call.relay:
            return relay_events(self, call, dep, resp, t0)
        return read_chunks(self, call, dep, resp, t0)

    # -- embeddings --------------------------------------------------------------------
    async def embed(self, inputs: list[Any], call: Call | None = None) -> EmbedResult:
        return await self._with_retries(lambda d: self._embed_once(inputs, call, d), True)

    async def _embed_once(self, inputs: list[Any], call: Call | None,
                          dep: HTTPDeployment) -> EmbedResult:
        body: dict[str, Any] = {"model": dep.upstream_model, "input": inputs}
        if call is not None:
            for k in ("encoding_format", "dimensions", "user"):
                if k in call.body:
                    body[k] = call.body[k]
            body["encoding_format"] = "float"
        t0 = time.perf_counter()
        dep.in_flight += 1
        try:
            resp = await self._post(dep, "embeddings", body)
            try:
                raw = await resp.read()
            except asyncio.TimeoutError:
                raise UpstreamTimeout(f"upstream {dep.label} timed out mid-answer") from None
            except aiohttp.ClientError as err:
                raise UpstreamError(f"upstream {dep.label} failed mid-answer: "
                                    f"{type(err).__name__}") from None
            finally:
                resp.release()
        except MarginError as exc:
            if call is not None:
                self._failed(call, dep, t0, exc)
            raise
        finally:
            dep.in_flight -= 1
        elapsed_ms = (time.perf_counter() - t0) * 1000
        if resp.status >= 400:
            exc = error_from(resp.status, raw, resp.headers.get("retry-after"))
            if call is not None:
                call.result.attempts.append(Attempt(self.model.name, dep.label, resp.status, elapsed_ms,
                                            error=exc.message[:200]))
            raise exc
        try:
            payload = orjson.loads(raw)
            data, tokens = embeddings_of(payload)
        except (orjson.JSONDecodeError, MalformedAnswer) as err:
            why = err.message if isinstance(err, MalformedAnswer) else "invalid JSON"
            if call is not None:
                call.result.attempts.append(Attempt(self.model.name, dep.label, 502,
                                                    elapsed_ms, error=why[:200]))
            raise UpstreamError(f"upstream {dep.label} answered with {why}") from None
        dep.observe(elapsed_ms)
        if len(data) != len(inputs):
            raise UpstreamError(f"upstream returned {len(data)} embeddings for "
                                f"{len(inputs)} inputs")
        per_input = [estimate_tokens(t) if isinstance(t, str) else len(t) for t in inputs]
        if not tokens:
            tokens = sum(per_input)
        return EmbedResult([d["embedding"] for d in data], tokens, per_input)
