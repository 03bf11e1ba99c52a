"""Rule features and the rules router."""

from __future__ import annotations

import pytest

from margin.routing.base import tier_for_probability
from margin.routing.features import FEATURE_NAMES, extract_features, features_dict, routing_text
from margin.routing.rules import RulesRouter, RulesRouterConfig, RulesWeights

SHORT_FACTUAL = [
    "What is the capital of France?",
    "Who wrote Pride and Prejudice?",
    "How tall is Mount Everest?",
    "Translate 'good morning' into Spanish.",
]
LONG_MULTI_STEP = [
    "A train leaves Paris at 9:00 travelling at 120 km/h; a second leaves Lyon, 465 km away, at "
    "9:30 at 150 km/h towards Paris. Calculate step by step when and where they meet, explain "
    "why your method works, and compare it with solving the equation 120t = 465 - 150(t - 0.5). "
    "Then prove that the meeting time does not depend on which station is called the origin. "
    * 3,
    "Here is my Python service:\n```python\ndef handler(event):\n    data = json.loads(event)\n"
    "    return process(data)\n```\nExplain why it fails under load, analyze the trade-offs of "
    "three fixes step by step, compare them, and design a test that proves the fix works. " * 3,
]


def test_features_of_a_chat_body():
    body = {
        "model": "auto",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": [{"type": "text", "text": "Explain why:\n```x = 1```"}]},
        ],
        "max_tokens": 255,
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "response_format": {"type": "json_object"},
    }
    f = features_dict(body)
    assert list(f) == list(FEATURE_NAMES)
    assert f["turns"] == 1.0 and f["system_prompt"] == 1.0
    assert f["tools"] == 1.0 and f["json_mode"] == 1.0
    assert f["log_max_tokens"] == pytest.approx(8.0)
    assert f["code"] >= 1 and f["reasoning"] >= 1
    assert routing_text(body) == "Explain why:\n```x = 1```"


def test_features_of_plain_prompts():
    assert extract_features("What is 2+2?") == extract_features({"prompt": "What is 2+2?"})
    maths = features_dict("Solve x = 3y + 4 when y = 2. How many apples are left in total?")
    assert maths["maths"] >= 2 and maths["word_problem"] >= 2
    mc = features_dict("Which is a mammal?\nA. Shark\nB. Whale\nC. Trout\nD. Eel\nAnswer:")
    assert mc["multiple_choice"] == 1.0
    assert features_dict("x" * 4092)["log_tokens"] == pytest.approx(10.0)


def test_rules_router_sends_short_factual_small_and_long_multi_step_large():
    router = RulesRouter()
    for prompt in SHORT_FACTUAL:
        assert router.choose_tier(prompt, 2) == 0, (prompt, router.strong_probability(prompt))
    for prompt in LONG_MULTI_STEP:
        assert router.choose_tier(prompt, 2) == 1, (prompt[:40], router.explain(prompt))
    assert max(router.strong_probability(p) for p in SHORT_FACTUAL) < min(
        router.strong_probability(p) for p in LONG_MULTI_STEP)


def test_operator_weights_and_tiers():
    router = RulesRouter(RulesRouterConfig(weights=RulesWeights(questions=6.0),
                                           tier_thresholds=[0.3, 0.9]))
    assert router.choose_tier("Is it raining?", 3) == 2  # the question mark now decides
    assert router.choose_tier("Hello there", 3) == 0
    assert router.tier_boundaries(3) == [0.3, 0.9]
    assert RulesRouter().tier_boundaries(4) == [0.25, 0.5, 0.75]
    assert RulesRouter(RulesRouterConfig(threshold=0.7)).tier_boundaries(2) == [0.7]
    assert RulesRouter().choose_tier("anything", 1) == 0
    explained = router.explain("Is it raining?")
    assert explained["questions"] == pytest.approx(6.0) and "bias" in explained


def test_config_validation():
    with pytest.raises(ValueError):
        RulesRouterConfig(tier_thresholds=[0.8, 0.2])
    with pytest.raises(ValueError):
        RulesRouterConfig.model_validate({"weights": {"no_such_feature": 1.0}})


def test_tier_for_probability_boundaries_are_inclusive():
    assert tier_for_probability(0.5, [0.5]) == 1
    assert tier_for_probability(0.49, [0.5]) == 0
    assert tier_for_probability(0.95, [0.3, 0.9]) == 2
