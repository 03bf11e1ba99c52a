"""Amazon Bedrock's Converse API as an upstream (``provider: bedrock``).

``POST {endpoint}/model/{modelId}/converse`` (and ``/converse-stream``), each request signed
with SigV4 by botocore from the standard AWS credential chain (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, profiles, instance roles); the stream is
AWS's binary event-stream framing, read with botocore's decoder. Nothing about signing or
framing is written here. Deployments, retries, cool-down and timeouts are the
OpenAI-compatible upstream's.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator
from urllib.parse import quote

import aiohttp
import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.eventstream import EventStreamBuffer, ParserError
from botocore.session import Session

from margin.errors import ConfigError, UpstreamError, UpstreamTimeout
from margin.metering.tokens import estimate_prompt_tokens, estimate_tokens
from margin.types import Call, Response
from margin.upstreams.bedrock_wire import StreamEvents, chat_payload, chat_usage, converse_body
from margin.upstreams.config import BedrockModelConfig, DeploymentConfig, HTTPModelConfig
from margin.upstreams.openai_http import HTTPDeployment, MalformedAnswer, OpenAIHTTPUpstream
from margin.upstreams.stream_book import StreamBook
from margin.upstreams.resilience import DeploymentHealth

_STREAM = "__margin_stream"  # _body -> _post: the streaming route (popped before sending)


class BedrockDeployment(HTTPDeployment):
    def __init__(self, model: HTTPModelConfig, dep: DeploymentConfig,
                 health: DeploymentHealth | None = None) -> None:
        super().__init__(model, dep, health)
        assert isinstance(model, BedrockModelConfig)
        self._headers.pop("authorization", None)  # SigV4 signs each request instead
        self.region = model.region
        self.credentials = Session().get_credentials()

    def signed_headers(self, url: str, data: bytes) -> dict[str, str]:
        if self.credentials is None:
            raise ConfigError("bedrock: no AWS credentials (set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY, or a profile)")
        request = AWSRequest(method="POST", url=url, data=data,
                             headers={"content-type": "application/json"})
        SigV4Auth(self.credentials.get_frozen_credentials(), "bedrock", self.region
                  ).add_auth(request)
        return dict(request.headers.items())


class BedrockUpstream(OpenAIHTTPUpstream):
    config_class = BedrockModelConfig
    deployment_class = BedrockDeployment
    batchable_embeddings = False
    batchable_completions = False


    def _check_payload(self, payload: Any) -> None:
        # a native answer: not chat-shaped until translated; an object is all it must be
        if not isinstance(payload, dict):
            raise MalformedAnswer(f"a malformed body: a JSON {type(payload).__name__}, "
                                  "not an object")
    def _body(self, call: Call, dep: HTTPDeployment) -> dict[str, Any]:
        if call.endpoint != "chat":
            raise UpstreamError(f"model {self.model.name!r} (bedrock) serves chat only")
        return {**converse_body(call.body), _STREAM: call.stream}

    async def _post(self, dep: HTTPDeployment, endpoint: str, body: dict[str, Any]
                    ) -> aiohttp.ClientResponse:
        assert isinstance(dep, BedrockDeployment)
        route = "converse-stream" if body.pop(_STREAM, False) else "converse"
        url = f"{dep.base}/model/{quote(dep.upstream_model, safe='')}/{route}"
        data = orjson.dumps(body)
        try:
            # Sent exactly as signed (the model id's quoted ':' stays quoted).
            return await dep.post(url, data, dep.signed_headers(url, data))
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"upstream {dep.label} did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream {dep.label} unreachable: {type(exc).__name__}") from None

    async def _complete_once(self, call: Call, dep: HTTPDeployment) -> Response:
        response = await super()._complete_once(call, dep)
        if response.stream is not None or response.payload is None:
            return response
        return Response(200, payload=chat_payload(response.payload, dep.upstream_model,
                                                  call.request_id))

    def _record_usage(self, call: Call, usage: Any, payload: dict | None) -> None:
        super()._record_usage(call, chat_usage(usage) if isinstance(usage, dict) else None,
                              chat_payload(payload, "") if payload else None)

    async def _stream(self, call: Call, dep: HTTPDeployment,
                      resp: aiohttp.ClientResponse, t0: float) -> AsyncIterator[dict[str, Any]]:
        client_wants_usage = bool((call.body.get("stream_options") or {}).get("include_usage"))
        reader = StreamEvents(dep.upstream_model)
        frames = EventStreamBuffer()
        book = StreamBook(self.model.name, call, dep, resp, t0)
        try:
            with book.reading("frame", (orjson.JSONDecodeError, ParserError), name_type=True):
                async for data in resp.content.iter_any():
                    frames.add_data(data)
                    for message in frames:
                        headers = message.headers
                        ev = orjson.loads(message.payload) if message.payload else {}
                        if headers.get(":message-type") != "event":
                            kind = headers.get(":exception-type") or headers.get(":error-code")
                            raise book.refuse(f"upstream stream error: {kind}: "
                                          f"{ev.get('message', ev)}")
                        if call.result.ttft_ms is None:
                            call.result.ttft_ms = call.elapsed_ms()
                        chunk = reader.feed(str(headers.get(":event-type")), ev)
                        if chunk is not None:
                            book.sent += 1
                            yield chunk
                if reader.usage is not None and client_wants_usage:
                    yield {"id": "", "object": "chat.completion.chunk", "created": reader.created,
                           "model": reader.model, "choices": [], "usage": chat_usage(reader.usage)}
        finally:
            elapsed_ms = book.close()
            if reader.usage is not None:
                u = chat_usage(reader.usage)
                details = u["prompt_tokens_details"]
                call.result.set_usage(u["prompt_tokens"], u["completion_tokens"],
                                      details["cached_tokens"],
                                      cache_write_tokens=details["cache_write_tokens"])
            elif book.billed:
                # Cut short before the metadata event: what was generated, estimated.
                call.result.set_usage(estimate_prompt_tokens(call.body),
                                      estimate_tokens("".join(reader.texts)), estimated=True)
            book.attempt(elapsed_ms)
