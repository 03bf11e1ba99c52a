"""Splitting one upstream answer back into each caller's own, with usage that adds up."""

from __future__ import annotations

import numpy as np
import pytest

from margin.batching.split import (combine_completion_bodies, completion_lane_key,
                                   completion_prompts, split_completion_payload,
                                   split_embed_result)
from margin.upstreams.base import EmbedResult


def test_embed_result_slices_vectors_and_keeps_own_token_counts():
    vectors = np.arange(12, dtype=np.float32).reshape(6, 2)
    result = EmbedResult(vectors, prompt_tokens=21, per_input_tokens=[1, 2, 3, 4, 5, 6],
                         compute_s=2.1)
    a, b, c = split_embed_result(result, [1, 3, 2])
    assert np.array_equal(a.vectors, vectors[:1]) and np.array_equal(c.vectors, vectors[4:])
    assert (a.prompt_tokens, b.prompt_tokens, c.prompt_tokens) == (1, 9, 11)
    assert b.per_input_tokens == [2, 3, 4]
    # compute time shared by tokens: 1/21, 9/21, 11/21 of 2.1 s
    assert [round(x.compute_s, 6) for x in (a, b, c)] == [0.1, 0.9, 1.1]


def test_embed_result_shares_an_upstream_total_that_disagrees_with_estimates():
    result = EmbedResult([[0.0]] * 3, prompt_tokens=30, per_input_tokens=[1, 1, 2])
    parts = split_embed_result(result, [2, 1])
    assert [p.prompt_tokens for p in parts] == [15, 15]
    assert sum(p.prompt_tokens for p in parts) == 30
    assert all(p.compute_s is None for p in parts)


def test_embed_result_with_the_wrong_number_of_vectors_is_an_error():
    with pytest.raises(ValueError):
        split_embed_result(EmbedResult([[0.0]] * 2, 2, [1, 1]), [1, 2])


def test_completion_prompts_only_for_shareable_requests():
    assert completion_prompts({"prompt": "hi"}) == ["hi"]
    assert completion_prompts({"prompt": ["a", "b"]}) == ["a", "b"]
    assert completion_prompts({"prompt": "hi", "stream": True}) is None
    assert completion_prompts({"prompt": "hi", "best_of": 3}) is None
    assert completion_prompts({"prompt": "hi", "suffix": "x"}) is None


def test_lane_key_ignores_prompt_user_and_model_only():
    a = {"model": "m", "prompt": "x", "user": "u1", "max_tokens": 5, "temperature": 0}
    b = {"model": "m", "prompt": "y", "user": "u2", "temperature": 0, "max_tokens": 5}
    c = {**a, "max_tokens": 6}
    assert completion_lane_key(a) == completion_lane_key(b) != completion_lane_key(c)


def test_combined_body_lists_every_prompt_in_order():
    bodies = [{"model": "m", "prompt": "a", "user": "u", "max_tokens": 3},
              {"model": "m", "prompt": ["b", "c"], "max_tokens": 3}]
    body = combine_completion_bodies(bodies, [["a"], ["b", "c"]])
    assert body == {"model": "m", "prompt": ["a", "b", "c"], "max_tokens": 3}


def _payload(texts: list[str]) -> dict:
    return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": i, "text": t, "finish_reason": "stop", "logprobs": None}
                        for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": 99, "completion_tokens": 99, "total_tokens": 198}}


def test_completion_split_gives_each_caller_its_choices_and_a_share_of_usage():
    prompts = [["one two three four"], ["five six", "seven eight"]]
    payload = _payload(["alpha", "beta gamma delta epsilon", "zeta eta theta"])
    shares = split_completion_payload(payload, prompts, 1, prompt_tokens=8,
                                      completion_tokens=8, usage_estimated=False)
    a, b = shares
    assert [c["text"] for c in a.payload["choices"]] == ["alpha"]
    assert [c["index"] for c in b.payload["choices"]] == [0, 1]
    assert [c["text"] for c in b.payload["choices"]] == ["beta gamma delta epsilon",
                                                         "zeta eta theta"]
    assert a.completion_tokens + b.completion_tokens == 8
    assert a.prompt_tokens + b.prompt_tokens == 8
    assert a.completion_tokens == 1 and a.prompt_tokens == 4
    assert b.payload["usage"] == {"prompt_tokens": 4, "completion_tokens": 7,
                                  "total_tokens": 11}
    assert a.payload["id"] == "cmpl-1" and a.estimated


def test_completion_split_with_n_choices_per_prompt():
    payload = _payload(["a1", "a2", "b1", "b2"])
    a, b = split_completion_payload(payload, [["p"], ["q"]], 2, 2, 4, False)
    assert [c["text"] for c in a.payload["choices"]] == ["a1", "a2"]
    assert [c["text"] for c in b.payload["choices"]] == ["b1", "b2"]


def test_completion_split_rejects_a_short_answer():
    with pytest.raises(ValueError):
        split_completion_payload(_payload(["only one"]), [["p"], ["q"]], 1, 2, 2, False)
