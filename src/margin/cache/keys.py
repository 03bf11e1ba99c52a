"""Cache keys: a hash of the canonical request.

Everything in the body that can change the answer is part of the key — an exclude-list,
so a parameter we have never heard of still separates entries. The fields that cannot
change the answer are left out, and the API's defaults are filled in, so that omitting
``temperature`` and sending ``temperature: 1`` share an entry.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

# Never part of the key: who asks, how the answer is delivered, bookkeeping.
NOT_IN_KEY = frozenset({"user", "stream", "stream_options", "metadata", "store",
                        "service_tier", "safety_identifier", "prompt_cache_key"})
# OpenAI's documented defaults for parameters that change sampling.
DEFAULTS: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0, "n": 1, "presence_penalty": 0.0,
                            "frequency_penalty": 0.0}


def canonical(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k not in NOT_IN_KEY and v is not None}
    if endpoint != "embeddings":
        for k, v in DEFAULTS.items():
            out.setdefault(k, v)
        # 1 and 1.0 mean the same
        for k in DEFAULTS:
            if isinstance(out.get(k), int) and not isinstance(out[k], bool):
                out[k] = float(out[k])
        if "max_completion_tokens" in out and "max_tokens" not in out:
            out["max_tokens"] = out.pop("max_completion_tokens")
    out["_endpoint"] = endpoint
    return out


def cache_key(endpoint: str, body: dict[str, Any], scope: str) -> str:
    data = orjson.dumps([scope, canonical(endpoint, body)], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(data, digest_size=20).hexdigest()
