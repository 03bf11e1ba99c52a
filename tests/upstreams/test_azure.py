"""The ``azure`` provider against a local server speaking Azure OpenAI's URLs and headers;
the fake is first checked with the official ``openai.AzureOpenAI`` client, its answers
against the SDK's types."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion

from margin.bench.fake_azure import FakeAzure
from tests.conftest import ThreadServer
from tests.gateway.dialects.helpers import wait_rows

KEY = "azure-test-key"
IN, OUT, READ = 2.5e-06, 1e-05, 1.25e-06  # gpt-4o in the bundled catalogue


@pytest.fixture
def fake():
    srv = ThreadServer(FakeAzure(KEY, {"gpt-4o-prod": "gpt-4o"})).start()
    yield srv
    srv.stop()


def test_fake_is_what_the_azure_sdk_calls(fake):
    client = openai.AzureOpenAI(azure_endpoint=fake.url, api_key=KEY,
                                api_version="2024-10-21", max_retries=0)
    resp = client.chat.completions.with_raw_response.create(
        model="gpt-4o-prod", messages=[{"role": "user", "content": "hi !cached=1"}])
    ChatCompletion.model_validate_json(resp.content, strict=False)
    parsed = resp.parse()
    CompletionUsage.model_validate(parsed.usage.model_dump(), strict=True)
    seen = httpx.get(fake.url + "/_seen").json()[-1]
    assert seen["path"] == "/openai/deployments/gpt-4o-prod/chat/completions"
    assert seen["query"] == {"api-version": ["2024-10-21"]} and seen["auth"] == "api-key"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope",
                                       messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("route", ["deployments", "v1"])
def test_openai_client_through_margin_to_azure(fake, gateway_factory, tmp_path, route):
    db = str(tmp_path / "ledger.db")
    gw = gateway_factory({"models": [{
        "name": "gpt4o", "provider": "azure", "api_base": fake.url, "route": route,
        "deployment": "gpt-4o-prod", "api_key_env": "FAKE_AZURE_KEY", "upstream_model": "gpt-4o"}],
        "ledger": {"url": db, "flush_interval_ms": 50}}, env={"FAKE_AZURE_KEY": KEY})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    resp = client.chat.completions.create(
        model="gpt4o", messages=[{"role": "user", "content": "a b c !cached=2"}])
    assert resp.usage.prompt_tokens == 4
    stream = client.chat.completions.create(
        model="gpt4o", stream=True, messages=[{"role": "user", "content": "hello there"}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("the quick brown")
    seen = httpx.get(fake.url + "/_seen").json()
    want = ("/openai/deployments/gpt-4o-prod/chat/completions" if route == "deployments"
            else "/openai/v1/chat/completions")
    assert {s["path"] for s in seen} == {want}
    rows = wait_rows(db, 2)
    assert (rows[0]["prompt_tokens"], rows[0]["cached_tokens"]) == (4, 2)
    assert rows[0]["cost_usd"] == pytest.approx(2 * IN + 2 * READ + 12 * OUT, rel=1e-9)
    assert (rows[1]["streamed"], rows[1]["estimated"], rows[1]["completion_tokens"]) == (1, 0, 12)
