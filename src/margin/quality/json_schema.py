"""The json_schema judge: the answer the user got validates against the request's
``response_format`` JSON schema. It looks at the candidate alone (the reference answer is
not needed to say whether a structure is right), so it suits cheap structured outputs."""

from __future__ import annotations

from typing import Any, Mapping

import orjson

from margin.quality.answers import answer_text
from margin.quality.verdict import Verdict
from margin.routing.cascade import json_request


class JsonSchemaJudge:
    name = "json_schema"

    async def judge(self, body: Mapping[str, Any], candidate: Mapping[str, Any],
                    reference: Mapping[str, Any]) -> Verdict:
        _, schema = json_request(body)
        if schema is None:
            return Verdict.not_judged("the request has no response_format json_schema")
        try:
            import jsonschema
        except ImportError:
            return Verdict.not_judged("jsonschema is not installed")
        try:
            value = orjson.loads(answer_text(candidate).strip())
        except orjson.JSONDecodeError:
            return Verdict(False, 0.0, "the answer is not JSON")
        try:
            jsonschema.validate(value, dict(schema))
        except jsonschema.ValidationError as exc:
            return Verdict(False, 0.0, f"schema: {exc.message}"[:200])
        except jsonschema.SchemaError as exc:
            return Verdict.not_judged(f"the request's schema is invalid: {exc.message}"[:200])
        return Verdict(True, 1.0)

    def worst_case_usd(self, body: Mapping[str, Any]) -> float:
        return 0.0
