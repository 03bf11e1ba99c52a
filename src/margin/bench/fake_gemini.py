"""A fake Gemini API server, for tests (a stand-in for a paid provider):
``POST /v1beta/models/{model}:generateContent`` (or ``/v1/…``) and ``:streamGenerateContent?alt=sse`` with
an API key (``x-goog-api-key`` or ``?key=``), Google's error shape and ``usageMetadata``.
Tests check its payloads against the ``google-genai`` SDK's own types.

The last user turn steers it: ``!tool=NAME`` calls that function (args ``{"city":
"Paris"}``), ``!cached=N`` / ``!thoughts=N`` report that many cached / thinking tokens,
``!words=N`` answers N words, ``!chunk_ms=N`` waits between stream chunks.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any
from urllib.parse import parse_qs

import orjson

from margin.bench import fake_asgi

WORDS = ("the quick brown fox jumps over the lazy dog and keeps running far away "
         "into the quiet green hills").split()


def _text(parts: list[dict[str, Any]]) -> str:
    return " ".join(str(p.get("text", "")) for p in parts or [] if "text" in p)


class FakeGemini:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.bodies: list[dict[str, Any]] = []

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
        query = parse_qs(scope.get("query_string", b"").decode())
        key = headers.get("x-goog-api-key") or (query.get("key") or [""])[0]
        if key != self.api_key:
            return await self._error(send, 400, "API key not valid. Please pass a valid API key.",
                                     "INVALID_ARGUMENT")
        version, _, rest = path[1:].partition("/")
        model, _, method = rest.removeprefix("models/").partition(":")
        if version not in ("v1", "v1beta") or not rest.startswith("models/") or method not in (
                "generateContent", "streamGenerateContent"):
            return await self._error(send, 404, f"no route {path}", "NOT_FOUND")
        req = orjson.loads(raw)
        self.bodies.append(req)
        contents = req.get("contents")
        if not isinstance(contents, list) or not contents:
            return await self._error(send, 400, "contents is not specified", "INVALID_ARGUMENT")
        users = [c for c in contents if c.get("role", "user") == "user"]
        directive: dict[str, str] = {}
        for word in _text(users[-1]["parts"]).split() if users else []:
            if word.startswith("!"):
                k, _, v = word[1:].partition("=")
                directive[k] = v
        prompt = _text((req.get("systemInstruction") or {}).get("parts", [])) + " " + " ".join(
            _text(c.get("parts", [])) for c in contents)
        tool = directive.get("tool")
        limit = int((req.get("generationConfig") or {}).get("maxOutputTokens") or 10**6)
        words = [] if tool else [WORDS[i % len(WORDS)] for i in
                                 range(min(int(directive.get("words", 12)), limit))]
        usage = {"promptTokenCount": max(1, len(prompt.split())),
                 "candidatesTokenCount": len(words) if words else 5,
                 "totalTokenCount": 0}
        if "cached" in directive:
            usage["cachedContentTokenCount"] = int(directive["cached"])
        if "thoughts" in directive:
            usage["thoughtsTokenCount"] = int(directive["thoughts"])
        usage["totalTokenCount"] = (usage["promptTokenCount"] + usage["candidatesTokenCount"]
                                    + usage.get("thoughtsTokenCount", 0))
        rid = hashlib.md5(raw).hexdigest()[:16]
        finish = "MAX_TOKENS" if words and len(words) == limit else "STOP"

        def response(parts: list[dict[str, Any]], done: bool,
                     so_far: int | None = None) -> dict[str, Any]:
            cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
            if done:
                cand["finishReason"] = finish
            # A stream's usage counts the answer so far, as Gemini's does.
            meta = usage if done or so_far is None else {
                **usage, "candidatesTokenCount": so_far,
                "totalTokenCount": usage["promptTokenCount"] + so_far}
            return {"candidates": [cand], "usageMetadata": meta, "modelVersion": model,
                    "responseId": rid}

        call_part = {"functionCall": {"name": tool, "args": {"city": "Paris"}}}
        if method == "generateContent":
            parts = [call_part] if tool else [{"text": " ".join(words)}]
            return await self._json(send, 200, response(parts, True))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        pieces = [[call_part]] if tool else [[{"text": w if i == 0 else " " + w}]
                                             for i, w in enumerate(words)]
        gap_s = float(directive.get("chunk_ms", 0)) / 1000
        for i, parts in enumerate(pieces):
            chunk = response(parts, i == len(pieces) - 1, i + 1)
            await send({"type": "http.response.body", "more_body": True,
                        "body": b"data: " + orjson.dumps(chunk) + b"\r\n\r\n"})
            if gap_s:
                await asyncio.sleep(gap_s)
        await send({"type": "http.response.body", "body": b""})

    async def _error(self, send: Any, status: int, message: str, code: str) -> None:
        await self._json(send, status, {"error": {"code": status, "message": message,
                                                  "status": code}})

    async def _json(self, send: Any, status: int, payload: Any) -> None:
        await fake_asgi.send_json(send, status, payload)
