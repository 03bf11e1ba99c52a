"""A fake Azure OpenAI resource, for tests (a stand-in for a paid provider): Azure's URLs
(``/openai/deployments/{deployment}/…?api-version=…`` and the v1 API ``/openai/v1/…``) and
its ``api-key`` header (or a bearer token) in front of the OpenAI fake's answers; a request
without a known deployment, an api-version or a key gets Azure's error shape."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import orjson

from margin.bench.fake_upstream import FakeUpstream


class FakeAzure:
    def __init__(self, api_key: str, deployments: dict[str, str]) -> None:
        self.api_key = api_key
        self.deployments = deployments  # deployment name -> the model it runs
        self.openai = FakeUpstream(name="azure")
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.openai(scope, receive, send)
        path = scope["path"]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        query = parse_qs(scope.get("query_string", b"").decode())
        if path == "/_seen":
            return await self._json(send, 200, self.seen[-20:])
        key = headers.get("api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        if key != self.api_key:
            return await self._json(send, 401, {"error": {
                "code": "401", "message": "Access denied due to invalid subscription key or "
                "wrong API endpoint."}})
        if path.startswith("/openai/deployments/"):
            name, _, rest = path[len("/openai/deployments/"):].partition("/")
            if "api-version" not in query:
                return await self._json(send, 404, {"error": {"code": "404",
                                                              "message": "Resource not found"}})
            if name not in self.deployments:
                return await self._json(send, 404, {"error": {
                    "code": "DeploymentNotFound",
                    "message": "The API deployment for this resource does not exist."}})
        elif path.startswith("/openai/v1/"):
            name, rest = "", path[len("/openai/v1/"):]
        else:
            return await self._json(send, 404, {"error": {"code": "404",
                                                          "message": "Resource not found"}})
        self.seen.append({"path": path, "query": query,
                          "auth": "api-key" if "api-key" in headers else "bearer"})
        inner = {**scope, "path": "/v1/" + rest, "query_string": b""}
        await self.openai(inner, receive, send)

    async def _json(self, send: Any, status: int, payload: Any) -> None:
        body = orjson.dumps(payload)
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
