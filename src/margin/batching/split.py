"""Combining callers' requests into one upstream call and splitting the answer back.

Pure functions: each caller gets its own vectors or choices, and its own share of the
call's usage and compute time, so per-request cost stays right when requests share a call.

- Embeddings: the inputs are concatenated; vectors are sliced back in order. Prompt tokens
  are the caller's own per-input counts when the upstream's total agrees with them, otherwise
  the total is shared in proportion to them. Compute time is shared by tokens.
- Completions (``/v1/completions`` with a list ``prompt``, as vLLM accepts): choices come back
  ``n`` per prompt in prompt order (OpenAI's ``index = prompt_index * n + j``); each caller gets
  its own, re-indexed from 0. The call's completion tokens are shared by each choice's own
  length, its prompt tokens by each caller's prompt length; the shares add up exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import orjson

from margin.batching.batcher import split_by_weight, split_int_by_weight
from margin.metering.tokens import estimate_tokens
from margin.upstreams.base import EmbedResult

# Body fields that may differ between requests that share a completions call: the prompt
# itself, and who asked. Every other field must be identical (it is part of the lane key).
_PER_CALLER = frozenset({"prompt", "user", "model"})


def offsets(sizes: Sequence[int]) -> list[int]:
    out, at = [], 0
    for s in sizes:
        out.append(at)
        at += s
    return out


def split_embed_result(result: EmbedResult, sizes: Sequence[int]) -> list[EmbedResult]:
    """One ``EmbedResult`` per caller, from the result of their concatenated inputs."""
    total = sum(sizes)
    if len(result.vectors) != total:
        raise ValueError(f"{len(result.vectors)} vectors for {total} inputs")
    per_input = list(result.per_input_tokens)
    if len(per_input) != total:
        per_input = [0] * total
    starts = offsets(sizes)
    own = [sum(per_input[a:a + n]) for a, n in zip(starts, sizes)]
    if sum(own) == result.prompt_tokens:
        prompt = own
    else:  # the upstream counted differently (its own tokenizer): share its total
        prompt = split_int_by_weight(result.prompt_tokens, own if sum(own) else list(sizes))
    compute = (split_by_weight(result.compute_s, prompt if sum(prompt) else list(sizes))
               if result.compute_s is not None else [None] * len(sizes))
    return [EmbedResult(result.vectors[a:a + n], prompt[i], per_input[a:a + n], compute[i])
            for i, (a, n) in enumerate(zip(starts, sizes))]


# -- completions ------------------------------------------------------------------------
def completion_prompts(body: dict[str, Any]) -> list[str] | None:
    """The caller's prompts, or None when the request cannot share a call."""
    if body.get("stream") or body.get("best_of") not in (None, 1) or body.get("suffix"):
        return None
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    return None


def completion_lane_key(body: dict[str, Any]) -> bytes:
    """Requests may share a call only when everything but the prompt is the same."""
    shared = {k: v for k, v in body.items() if k not in _PER_CALLER}
    return orjson.dumps(shared, option=orjson.OPT_SORT_KEYS)


def combine_completion_bodies(bodies: Sequence[dict[str, Any]],
                              prompts: Sequence[Sequence[str]]) -> dict[str, Any]:
    body = {k: v for k, v in bodies[0].items() if k not in _PER_CALLER}
    body["model"] = bodies[0].get("model")
    body["prompt"] = [p for ps in prompts for p in ps]
    return body


@dataclass(frozen=True, slots=True)
class CompletionShare:
    payload: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    estimated: bool


def _choice_tokens(choice: dict[str, Any]) -> int:
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict) and isinstance(logprobs.get("tokens"), list):
        return len(logprobs["tokens"])
    return estimate_tokens(str(choice.get("text") or ""))


def split_completion_payload(payload: dict[str, Any], prompts: Sequence[Sequence[str]], n: int,
                             prompt_tokens: int, completion_tokens: int,
                             usage_estimated: bool) -> list[CompletionShare]:
    """Each caller's own completion answer from the combined one."""
    sizes = [len(ps) for ps in prompts]
    want = sum(sizes) * n
    choices = sorted(payload.get("choices") or [], key=lambda c: c.get("index", 0))
    if len(choices) != want:
        raise ValueError(f"upstream returned {len(choices)} choices for {want}")
    choice_w = [_choice_tokens(c) for c in choices]
    completion_each = split_int_by_weight(completion_tokens, choice_w)
    prompt_w = [sum(estimate_tokens(p) for p in ps) for ps in prompts]
    prompt_each = split_int_by_weight(prompt_tokens, prompt_w)
    head = {k: v for k, v in payload.items() if k not in ("choices", "usage")}
    shares = []
    for i, (start, size) in enumerate(zip(offsets(sizes), sizes)):
        lo, hi = start * n, (start + size) * n
        own = [{**c, "index": j} for j, c in enumerate(choices[lo:hi])]
        c_tokens = sum(completion_each[lo:hi])
        p_tokens = prompt_each[i]
        shares.append(CompletionShare(
            {**head, "choices": own, "usage": {"prompt_tokens": p_tokens,
                                               "completion_tokens": c_tokens,
                                               "total_tokens": p_tokens + c_tokens}},
            p_tokens, c_tokens, usage_estimated or len(prompts) > 1))
    return shares
