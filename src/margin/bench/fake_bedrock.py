"""A fake Amazon Bedrock runtime, for tests (a stand-in for a paid provider):
``POST /model/{modelId}/converse`` and ``/converse-stream``, answers in Converse's JSON and
AWS's binary event-stream framing. Every request's SigV4 signature is checked by
recomputing it with botocore from the known test credentials; tests also point botocore's
own ``bedrock-runtime`` client at it, so its answers must parse with the service model.

The last user turn steers it: ``!tool=NAME`` calls that tool (input ``{"city": "Paris"}``),
``!cache_read=N`` / ``!cache_write=N`` report prompt-cache tokens, ``!words=N`` answers N
words, ``!event_ms=N`` waits between stream events.

The event-stream encoder below exists only here, to play AWS's side; margin reads the
framing with botocore's decoder.
"""

from __future__ import annotations

import asyncio
import binascii
import struct
from typing import Any
from urllib.parse import unquote

import orjson

from margin.bench import fake_asgi

WORDS = ("the quick brown fox jumps over the lazy dog and keeps running far away "
         "into the quiet green hills").split()


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (lengths + CRC), string headers, payload, CRC."""
    head = b"".join(struct.pack("!B", len(k)) + k.encode() + b"\x07"
                    + struct.pack("!H", len(v.encode())) + v.encode()
                    for k, v in headers.items())
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack("!II", total, len(head))
    prelude += struct.pack("!I", binascii.crc32(prelude) & 0xFFFFFFFF)
    body = prelude + head + payload
    return body + struct.pack("!I", binascii.crc32(body) & 0xFFFFFFFF)


def event(kind: str, payload: dict[str, Any]) -> bytes:
    return frame({":event-type": kind, ":content-type": "application/json",
                  ":message-type": "event"}, orjson.dumps(payload))


def _text(content: list[dict[str, Any]]) -> str:
    out = []
    for block in content or []:
        if "text" in block:
            out.append(block["text"])
        elif "toolResult" in block:
            out.append(_text(block["toolResult"].get("content") or []))
    return " ".join(out)


class FakeBedrock:
    def __init__(self, access_key: str, secret_key: str, region: str = "us-east-1") -> None:
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self.bodies: list[dict[str, Any]] = []

    def _signature_ok(self, scope: dict, headers: dict[str, str], body: bytes) -> str | None:
        """Why the signature is wrong, or None: recomputed with botocore's SigV4."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        auth = headers.get("authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return "missing SigV4 Authorization"
        fields = dict(p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(","))
        scope_parts = fields.get("Credential", "").split("/")
        if scope_parts[0] != self.access_key or scope_parts[2:4] != [self.region, "bedrock"]:
            return f"wrong credential scope {fields.get('Credential')}"
        signed = fields.get("SignedHeaders", "").split(";")
        url = f"http://{headers['host']}{scope['raw_path'].decode()}"
        req = AWSRequest(method="POST", url=url, data=body,
                         headers={h: headers[h] for h in signed if h in headers})
        req.context["timestamp"] = headers.get("x-amz-date", "")
        signer = SigV4Auth(Credentials(self.access_key, self.secret_key), "bedrock", self.region)
        expected = signer.signature(signer.string_to_sign(req, signer.canonical_request(req)),
                                    req)
        return None if expected == fields.get("Signature") else "signature does not match"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await fake_asgi.lifespan(receive, send)
        if scope["type"] != "http":
            return
        raw = await fake_asgi.read_body(receive)
        path = scope["path"]
        if path == "/_stats":
            return await self._json(send, 200, {"bodies": self.bodies[-20:]})
        headers = fake_asgi.request_headers(scope)
        why = self._signature_ok(scope, headers, raw)
        if why:
            return await self._error(send, 403, "UnrecognizedClientException", why)
        parts = path.split("/")
        if len(parts) != 4 or parts[1] != "model" or parts[3] not in ("converse",
                                                                      "converse-stream"):
            return await self._error(send, 404, "ResourceNotFoundException", f"no route {path}")
        model = unquote(parts[2])
        req = orjson.loads(raw)
        self.bodies.append(req)
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages:
            return await self._error(send, 400, "ValidationException", "messages is required")
        users = [m for m in messages if m.get("role") == "user"]
        directive: dict[str, str] = {}
        for word in _text(users[-1]["content"]).split() if users else []:
            if word.startswith("!"):
                k, _, v = word[1:].partition("=")
                directive[k] = v
        prompt = _text(req.get("system") or []) + " " + " ".join(
            _text(m["content"]) for m in messages)
        tool = directive.get("tool")
        limit = int((req.get("inferenceConfig") or {}).get("maxTokens") or 10**6)
        words = [] if tool else [WORDS[i % len(WORDS)] for i in
                                 range(min(int(directive.get("words", 12)), limit))]
        usage = {"inputTokens": max(1, len(prompt.split())),
                 "outputTokens": len(words) if words else 5}
        for key, name in (("cache_read", "cacheReadInputTokens"),
                          ("cache_write", "cacheWriteInputTokens")):
            if key in directive:
                usage[name] = int(directive[key])
        usage["totalTokens"] = sum(usage.values())
        stop = "tool_use" if tool else ("max_tokens" if words and len(words) == limit
                                        else "end_turn")
        tool_id = "tooluse_" + str(abs(hash(tool)) % 10**8)
        if parts[3] == "converse":
            content: list[dict[str, Any]] = [{"text": " ".join(words)}] if words else []
            if tool:
                content.append({"toolUse": {"toolUseId": tool_id, "name": tool,
                                            "input": {"city": "Paris"}}})
            return await self._json(send, 200, {
                "output": {"message": {"role": "assistant", "content": content}},
                "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 1}})
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/vnd.amazon.eventstream"),
            (b"x-amzn-requestid", b"fake-request")]})
        gap_s = float(directive.get("event_ms", 0)) / 1000

        async def out(kind: str, payload: dict[str, Any]) -> None:
            await send({"type": "http.response.body", "body": event(kind, payload),
                        "more_body": True})
            if gap_s:
                await asyncio.sleep(gap_s)

        await out("messageStart", {"role": "assistant"})
        index = 0
        if words:
            for i, w in enumerate(words):
                await out("contentBlockDelta", {"contentBlockIndex": 0,
                                                "delta": {"text": w if i == 0 else " " + w}})
            await out("contentBlockStop", {"contentBlockIndex": 0})
            index = 1
        if tool:
            await out("contentBlockStart", {"contentBlockIndex": index, "start": {
                "toolUse": {"toolUseId": tool_id, "name": tool}}})
            for piece in ('{"city": ', '"Paris"}'):
                await out("contentBlockDelta", {"contentBlockIndex": index,
                                                "delta": {"toolUse": {"input": piece}}})
            await out("contentBlockStop", {"contentBlockIndex": index})
        await out("messageStop", {"stopReason": stop})
        await out("metadata", {"usage": usage, "metrics": {"latencyMs": 1}})
        await send({"type": "http.response.body", "body": b""})

    async def _error(self, send: Any, status: int, kind: str, message: str) -> None:
        body = orjson.dumps({"message": message})
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"x-amzn-errortype", kind.encode()),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _json(self, send: Any, status: int, payload: Any) -> None:
        await fake_asgi.send_json(send, status, payload)
