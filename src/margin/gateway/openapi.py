"""``GET /openapi.json``: margin's HTTP interface as an OpenAPI 3.1 document.

Built from the definitions the validation itself uses (``gateway/validate.py``'s tables of
roles, bounds and limits, ``margin/attribution.py``'s caps), so the document and what the
gateway accepts cannot drift apart; the request schemas follow the providers' own (OpenAI's
chat, completions and embeddings bodies), and every error has OpenAI's shape. Built once
per gateway: each endpoint's ``model`` enum lists the names that serve it, the admin paths
appear when a master key is set. CI fuzzes a live gateway from it (tests/gateway/test_openapi.py).
"""

from __future__ import annotations

from typing import Any

from margin.attribution import (MAX_ATTRIBUTION_CHARS, MAX_METADATA_KEY_CHARS,
                                MAX_METADATA_PAIRS)
from margin.gateway import validate as v
from margin.jsonbody import MAX_DEPTH

JSON = "application/json"
# No C0/C1 control characters (what ``attribution`` refuses).
_PRINTABLE = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error_responses(*statuses: int) -> dict[str, Any]:
    why = {400: "Bad input; the message names the field", 401: "Missing or unknown API key",
           403: "This key may not do this", 404: "No such model, key or path",
           405: "Method not allowed here", 408: "Body not received in time",
           413: "Body over the size limit", 429: "Rate limit, budget or failed-auth throttle",
           499: "Client closed the connection", 502: "The upstream failed or answered badly",
           503: "Overloaded; retry later", 504: "The upstream did not answer in time"}
    return {str(s): {"description": why[s],
                     "content": {JSON: {"schema": _ref("Error")}}} for s in statuses}


_PROXIED_ERRORS = (400, 401, 403, 404, 408, 413, 429, 502, 503, 504)
_ADMIN_ERRORS = (400, 401, 403, 404, 408, 413)


def _sampling() -> dict[str, Any]:
    props: dict[str, Any] = {}
    for name, (lo, hi) in v.SAMPLING_NUMBERS.items():
        props[name] = _nullable({"type": "number", "minimum": lo, "maximum": hi})
    for name, (ilo, ihi) in v.SAMPLING_INTEGERS.items():
        s: dict[str, Any] = {"type": "integer", "minimum": ilo}
        if ihi is not None:
            s["maximum"] = ihi
        props[name] = _nullable(s)
    props["stream"] = _nullable({"type": "boolean"})
    props["stream_options"] = _nullable({"type": "object", "properties": {
        "include_usage": _nullable({"type": "boolean"})}})
    props["stop"] = _nullable({"anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "maxItems": v.MAX_STOP}]})
    return props


def _common(models: list[str]) -> dict[str, Any]:
    """The fields every proxied body shares; ``models``: the names this endpoint serves."""
    model: dict[str, Any] = {"type": "string", "minLength": 1,
                             "maxLength": MAX_ATTRIBUTION_CHARS}
    if models:
        model = {"type": "string", "enum": models}
    return {
        "model": model,
        "user": _nullable(_ref("Attribution")),
        "metadata": _nullable({
            "type": "object", "maxProperties": MAX_METADATA_PAIRS,
            "propertyNames": {"maxLength": MAX_METADATA_KEY_CHARS, "pattern": _PRINTABLE},
            "additionalProperties": _ref("Attribution")}),
    }


def _schemas(chat_models: list[str], embedding_models: list[str]) -> dict[str, Any]:
    token_ids = {"type": "array", "minItems": 1,
                 "items": {"type": "integer", "minimum": 0}}
    # Conditions across fields (a text part needs its text; system, developer and user
    # messages need content; n above 1 not with stream) are said in words, not with
    # if/then: they are checked all the same, and generators handle plain schemas better.
    part = {"type": "object", "required": ["type"],
            "description": "a content part; a 'text' part has a string 'text'",
            "properties": {"type": {"type": "string"}, "text": {"type": "string"}}}
    message = {
        "type": "object", "required": ["role"],
        "properties": {
            "role": {"type": "string", "enum": sorted(v.ROLES)},
            "content": _nullable({"anyOf": [{"type": "string"},
                                            {"type": "array", "items": part}]}),
            "name": _nullable({"type": "string"})},
        "description": "system, developer and user messages need content"}
    chat = {
        "type": "object", "required": ["model", "messages"],
        "description": f"OpenAI's chat request. Bodies nest at most {MAX_DEPTH} levels; "
                       "'n' above 1 is refused with 'stream'.",
        "properties": {
            **_common(chat_models), **_sampling(),
            "messages": {"type": "array", "minItems": 1, "items": message},
            "tools": _nullable({"type": "array", "items": {"type": "object"}}),
            "response_format": _nullable({
                "type": "object", "required": ["type"],
                "properties": {"type": {"enum": list(v.RESPONSE_FORMATS)}}}),
        }}
    completions = {
        "type": "object", "required": ["model", "prompt"],
        "properties": {
            **_common(chat_models), **_sampling(),
            "prompt": {"anyOf": [
                {"type": "string"},
                {"type": "array", "minItems": 1, "items": {"type": "string"}},
                token_ids,
                {"type": "array", "minItems": 1, "items": token_ids}]},
        }}
    embeddings = {
        "type": "object", "required": ["model", "input"],
        "properties": {
            **_common(embedding_models),
            "input": {"anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "minItems": 1, "maxItems": v.MAX_EMBEDDING_INPUTS,
                 "items": {"type": "string", "minLength": 1}},
                {"type": "array", "minItems": 1, "items": {"type": "integer"}},
                {"type": "array", "minItems": 1, "maxItems": v.MAX_EMBEDDING_INPUTS,
                 "items": {"type": "array", "items": {"type": "integer"}}}]},
            "encoding_format": _nullable({"enum": sorted(v.ENCODINGS)}),
            "dimensions": _nullable({"type": "integer",
                                     "description": "passed to the model as given"})}}
    key_fields = {
        "user": {**_ref("Attribution"), "minLength": 1},
        "team": _nullable(_ref("Attribution")),
        "name": _nullable(_ref("Attribution")),
        "models": _nullable({"type": "array", "items": {"type": "string", "minLength": 1}}),
        "rpm": _nullable({"type": "integer", "minimum": 1, "maximum": 10**12}),
        "tpm": _nullable({"type": "integer", "minimum": 1, "maximum": 10**12}),
        "budget_usd": _nullable({"type": "number", "exclusiveMinimum": 0}),
        "budget_period": _nullable({"enum": ["day", "week", "month"]}),
        "expires": _nullable({"type": "string", "description":
                              "a duration from now (30d), an ISO date/time, or never"}),
        "role": _nullable({"enum": ["user", "viewer", "admin"], "description":
                           "viewer: also reads the console; admin: also manages keys"}),
    }
    key = {"type": "object", "required": ["id", "user", "status", "created_at"],
           "properties": {
               "id": {"type": "string"}, "name": {"type": ["string", "null"]},
               "user": {"type": ["string", "null"]}, "team": {"type": ["string", "null"]},
               "models": {"type": ["array", "null"], "items": {"type": "string"}},
               "rpm": {"type": ["integer", "null"]}, "tpm": {"type": ["integer", "null"]},
               "budget_usd": {"type": ["number", "null"]},
               "budget_period": {"type": ["string", "null"]},
               "expires_at": {"type": ["number", "null"]},
               "created_at": {"type": "number"}, "updated_at": {"type": "number"},
               "revoked_at": {"type": ["number", "null"]},
               "status": {"enum": ["active", "revoked", "expired"]},
               "role": {"enum": ["user", "viewer", "admin"]},
               "key": {"type": "string", "description": "shown once, on creation"}}}
    return {
        "Attribution": {"type": "string", "maxLength": MAX_ATTRIBUTION_CHARS,
                        "pattern": _PRINTABLE},
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["message", "type"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "code": {"type": ["string", "null"]},
                           "param": {"type": ["string", "null"]}}}}},
        "ChatRequest": chat, "CompletionsRequest": completions,
        "EmbeddingsRequest": embeddings,
        "Completion": {"type": "object", "required": ["choices"], "properties": {
            "id": {"type": "string"}, "object": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object"}},
            "usage": {"type": "object"}}},
        "Embeddings": {"type": "object", "required": ["data"], "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"type": "object", "required": ["embedding"]}},
            "usage": {"type": "object"}}},
        "Model": {"type": "object", "required": ["id", "object"], "properties": {
            "id": {"type": "string"}, "object": {"const": "model"}}},
        "ModelList": {"type": "object", "required": ["data"], "properties": {
            "object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}}},
        "Health": {"type": "object", "required": ["status"], "properties": {
            "status": {"enum": ["ok", "starting"]}, "ledger_db_up": {"type": "boolean"},
            "ledger_queue_rows": {"type": "integer"}, "models": {"type": "array"}}},
        "KeyCreate": {"type": "object", "required": ["user"], "additionalProperties": False,
                      "properties": key_fields},
        "KeyUpdate": {"type": "object", "additionalProperties": False,
                      "properties": {**key_fields,
                                     "user": {**_ref("Attribution"), "minLength": 1}}},
        "Key": key,
        "KeyList": {"type": "object", "required": ["data"], "properties": {
            "object": {"const": "list"}, "data": {"type": "array", "items": _ref("Key")}}},
    }


def _proxied(summary: str, request: str, answer: str, streams: bool) -> dict[str, Any]:
    content: dict[str, Any] = {JSON: {"schema": _ref(answer)}}
    if streams:
        content["text/event-stream"] = {"schema": {
            "type": "object", "description": "one event: data is a chunk's JSON or [DONE]",
            "properties": {"data": {"type": "string"}}}}
    return {"post": {
        "summary": summary, "operationId": request.removesuffix("Request").lower(),
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref(request)}}},
        "responses": {"200": {"description": "The answer (SSE when stream is true)",
                              "content": content}, **_error_responses(*_PROXIED_ERRORS)}}}


def _get(summary: str, op: str, schema: dict[str, Any], media: str = JSON,
         errors: tuple[int, ...] = ()) -> dict[str, Any]:
    return {"get": {"summary": summary, "operationId": op, "responses": {
        "200": {"description": summary, "content": {media: {"schema": schema}}},
        **_error_responses(*errors)}}}


def _admin_paths() -> dict[str, Any]:
    key_id = [{"name": "key_id", "in": "path", "required": True,
               "schema": {"type": "string"}}]
    one = {"200": {"description": "The key", "content": {JSON: {"schema": _ref("Key")}}}}
    spend = _get("Spend by user, team, feature or model", "spend", {"type": "object"},
                 errors=_ADMIN_ERRORS)
    common = ("since", "until", "user", "team", "feature", "model", "key", "status", "cache")

    def query(*names: str) -> list[dict[str, Any]]:
        return [{"name": n, "in": "query", "schema": {"type": "string"}} for n in names]
    spend = _get("Spend per user, team, feature, model or key over time, the Pareto curve of "
                 "users, bot-like users (docs/admin-api.md)", "spend", {"type": "object"},
                 errors=_ADMIN_ERRORS)
    spend["get"]["parameters"] = query(*common, "by", "bucket", "top", "top_users", "tz")
    console: dict[str, Any] = {}
    for path, op, summary, names in (
            ("/admin/overview", "overview", "Spend, requests, savings, latencies",
             common[2:]),
            ("/admin/budgets", "budgets", "Budgets, their projected exhaustion and alerts", ()),
            ("/admin/requests", "requests", "The request log, newest first",
             (*common, "limit", "cursor")),
            ("/admin/capacity", "capacity", "Load per model against capacity, and forecast",
             ("horizon",)),
            ("/admin/anomalies", "anomalies", "Cost anomalies", ("since",)),
            ("/admin/alerts", "alerts", "Budget exhaustion and capacity alerts", ()),
            ("/admin/quality", "quality", "Per optimisation: served, saved, shadow agreement "
             "with its Wilson interval, evaluation spend", ("since", "until", "by")),
            ("/admin/experiments", "experiments",
             "A/B experiments, or one experiment's report (docs/experiments.md)",
             ("name", "since"))):
        console[path] = _get(summary, op, {"type": "object"}, errors=_ADMIN_ERRORS)
        console[path]["get"]["parameters"] = query(*names)
    # /admin/requests/<request_id> is in docs/admin-api.md: a fuzzer can only guess ids.
    return {
        **console,
        "/admin/keys": {
            "get": {"summary": "List keys", "operationId": "listKeys",
                    "parameters": [{"name": "all", "in": "query", "schema": {
                        "type": "string", "description": "1, true or yes: revoked keys too"}}],
                    "responses": {"200": {"description": "Keys", "content": {
                        JSON: {"schema": _ref("KeyList")}}}, **_error_responses(
                            *_ADMIN_ERRORS)}},
            "post": {"summary": "Create a key", "operationId": "createKey",
                     "requestBody": {"required": True, "content": {
                         JSON: {"schema": _ref("KeyCreate")}}},
                     "responses": {"201": {"description": "The key, shown this once",
                                           "content": {JSON: {"schema": _ref("Key")}}},
                                   **_error_responses(*_ADMIN_ERRORS)}}},
        "/admin/keys/{key_id}": {
            "parameters": key_id,
            "get": {"summary": "One key", "operationId": "getKey",
                    "responses": {**one, **_error_responses(*_ADMIN_ERRORS)}},
            "patch": {"summary": "Change a key", "operationId": "updateKey",
                      "requestBody": {"required": False, "content": {
                          JSON: {"schema": _ref("KeyUpdate")}}},
                      "responses": {**one, **_error_responses(*_ADMIN_ERRORS)}},
            "delete": {"summary": "Revoke a key", "operationId": "revokeKey",
                       "responses": {**one, **_error_responses(*_ADMIN_ERRORS)}}},
        "/admin/spend": spend,
    }


def document(chat_models: list[str], embedding_models: list[str], with_admin: bool,
             with_auth: bool) -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/v1/chat/completions": _proxied("Chat", "ChatRequest", "Completion", True),
        "/v1/completions": _proxied("Text completion", "CompletionsRequest", "Completion",
                                    True),
        "/v1/embeddings": _proxied("Embeddings", "EmbeddingsRequest", "Embeddings", False),
        "/v1/models": _get("Models served", "listModels", _ref("ModelList"),
                           errors=(401, 429)),
        "/v1/models/{model}": {
            "parameters": [{"name": "model", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            **_get("One model", "getModel", _ref("Model"), errors=(401, 404, 429))},
        "/healthz": _get("Liveness and the ledger's state", "health", _ref("Health")),
        "/metrics": _get("Prometheus metrics", "metrics", {"type": "string"},
                         "text/plain", errors=(401,)),
        "/openapi.json": _get("This document", "openapi", {"type": "object"}),
    }
    if with_admin:
        paths.update(_admin_paths())
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "margin gateway", "version": "1",
                 "description": "An OpenAI-compatible gateway: the proxied endpoints take "
                                "OpenAI's request bodies; errors have OpenAI's shape."},
        "paths": paths,
        "components": {"schemas": _schemas(chat_models, embedding_models)},
    }
    if with_auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http",
                                                           "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
