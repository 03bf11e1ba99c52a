"""A provider added the way a plug-in package adds one: its own module, its own config class,
an entry point in the ``margin.upstreams`` group — then served over HTTP by ``margin serve``."""

from __future__ import annotations

import os
import sqlite3
import textwrap

import httpx

PLUGIN = textwrap.dedent('''
    from typing import ClassVar
    from margin.config import ModelConfig
    from margin.types import Attempt, Call, Response
    from margin.upstreams.base import Upstream

    class EchoConfig(ModelConfig):
        provider_name: ClassVar[str] = "echo"
        default_kind: ClassVar[str] = "chat"
        greeting: str
        """What each answer starts with."""

    class EchoUpstream(Upstream):
        config_class = EchoConfig

        async def complete(self, call: Call) -> Response:
            asked = call.body["messages"][-1]["content"]
            text = f"{self.model.greeting}, you said: {asked}"
            call.result.set_usage(len(asked.split()), len(text.split()))
            call.result.attempts.append(Attempt(self.model.name, "echo", 200, 0.1))
            return Response(200, payload={
                "id": "echo-1", "object": "chat.completion", "created": 0,
                "model": self.model.name, "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": len(asked.split()),
                          "completion_tokens": len(text.split())}})
''')


def install_plugin(root):
    (root / "margin_echo.py").write_text(PLUGIN)
    dist = root / "margin_echo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: margin-echo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[margin.upstreams]\necho = margin_echo:EchoUpstream\n")


def test_a_plugin_provider_serves_requests_and_is_validated_strictly(tmp_path, gateway_factory):
    install_plugin(tmp_path)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path),
                                                         os.environ.get("PYTHONPATH")]))}
    db = tmp_path / "ledger.db"
    gw = gateway_factory({"models": [{"name": "parrot", "provider": "echo", "greeting": "Hi",
                                      "input_cost_per_mtok": 1.0, "output_cost_per_mtok": 2.0}],
                          "ledger": {"url": str(db)}}, env=env)
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=30, json={
        "model": "parrot", "messages": [{"role": "user", "content": "hello there"}]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Hi, you said: hello there"
    gw.stop()
    (provider, prompt, completion, cost), = sqlite3.connect(db).execute(
        "SELECT provider, prompt_tokens, completion_tokens, cost_usd FROM requests").fetchall()
    assert (provider, prompt, completion) == ("echo", 2, 5)
    assert abs(cost - (2 * 1.0 + 5 * 2.0) / 1e6) < 1e-12
    # The plug-in's own config class validates its models: a misspelt field is an error.
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - {name: parrot, provider: echo, greting: Hi}\n")
    import subprocess
    import sys
    r2 = subprocess.run([sys.executable, "-m", "margin.cli.main", "config", "check", str(bad)],
                        capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    assert r2.returncode == 2
    assert "bad.yaml:2: models.0.greting: Extra inputs are not permitted (and 1 more)" \
        in r2.stderr
