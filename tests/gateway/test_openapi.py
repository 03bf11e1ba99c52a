"""``GET /openapi.json``: an OpenAPI 3.1 document that agrees with the validation (bodies
it admits are accepted, bodies it refuses get a 400, on a corpus of both), and a bounded
Schemathesis run against a live gateway from it with zero 5xx and answers that match it."""

from __future__ import annotations

import subprocess
import sys
import uuid

import httpx
import jsonschema
import pytest

from margin.errors import BadRequest
from margin.gateway import openapi, validate
from tests.conftest import fake_model

MASTER = "master-" + uuid.uuid4().hex
MSG = [{"role": "user", "content": "hi"}]


def _validator(doc: dict, name: str) -> jsonschema.Draft202012Validator:
    root = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    return jsonschema.Draft202012Validator(root)


def _accepted(check, body: dict) -> bool:
    try:
        check(body)
    except BadRequest:
        return False
    return True


# (endpoint schema, the validation, body): the document and the validation must agree.
CORPUS = [
    ("ChatRequest", validate.validate_chat, {"model": "small", "messages": MSG}),
    ("ChatRequest", validate.validate_chat, {"model": "small", "messages": MSG, "n": None,
                                             "temperature": 2, "top_p": 0, "seed": -5,
                                             "stop": ["a", "b"], "user": "zoë",
                                             "metadata": {"k": "v"}, "tools": [{}]}),
    ("ChatRequest", validate.validate_chat, {"model": "small", "messages": []}),
    ("ChatRequest", validate.validate_chat, {"model": "small", "messages": MSG,
                                             "temperature": 2.5}),
    ("ChatRequest", validate.validate_chat, {"model": "small", "messages": MSG, "n": 0}),
    ("ChatRequest", validate.validate_chat, {"model": "small", "messages": MSG,
                                             "stop": ["a"] * 5}),
    ("ChatRequest", validate.validate_chat, {"model": "small",
                                             "messages": [{"role": {"a": 1}}]}),
    ("ChatRequest", validate.validate_chat, {"model": "small", "messages": MSG,
                                             "user": "u" * 257}),
    ("ChatRequest", validate.validate_chat, {"model": "small", "messages": MSG,
                                             "user": "a\u0001"}),
    ("ChatRequest", validate.validate_chat, {"model": "small", "messages": MSG,
                                             "metadata": {"k": 1}}),
    ("ChatRequest", validate.validate_chat, {"model": "small", "messages": MSG,
                                             "response_format": {"type": "yaml"}}),
    ("ChatRequest", validate.validate_chat, {"model": "small", "messages": MSG,
                                             "stream_options": {"include_usage": 1}}),
    ("CompletionsRequest", validate.validate_completions,
     {"model": "small", "prompt": [1, 2, 3]}),
    ("CompletionsRequest", validate.validate_completions,
     {"model": "small", "prompt": [[1, 2], [3]]}),
    ("CompletionsRequest", validate.validate_completions, {"model": "small", "prompt": []}),
    ("CompletionsRequest", validate.validate_completions,
     {"model": "small", "prompt": [1, "a"]}),
    ("EmbeddingsRequest", validate.validate_embeddings, {"model": "emb", "input": "a"}),
    ("EmbeddingsRequest", validate.validate_embeddings, {"model": "emb", "input": ""}),
    ("EmbeddingsRequest", validate.validate_embeddings,
     {"model": "emb", "input": ["a"] * 2049}),
    ("EmbeddingsRequest", validate.validate_embeddings,
     {"model": "emb", "input": "a", "encoding_format": {}}),
]


@pytest.mark.parametrize("case", range(len(CORPUS)))
def test_document_and_validation_agree(case):
    doc = openapi.document(["small"], ["emb"], with_admin=True, with_auth=True)
    name, check, body = CORPUS[case]
    in_schema = _validator(doc, name).is_valid(body)
    assert in_schema == _accepted(check, body), (name, body)


def test_bounds_come_from_the_validation_tables():
    doc = openapi.document(["small"], [], with_admin=False, with_auth=False)
    props = doc["components"]["schemas"]["ChatRequest"]["properties"]
    for name, (lo, hi) in validate.SAMPLING_NUMBERS.items():
        assert props[name]["anyOf"][0]["minimum"] == lo
        assert props[name]["anyOf"][0]["maximum"] == hi
    assert "/admin/keys" not in doc["paths"] and "security" not in doc


@pytest.fixture
def live(fake_upstream, gateway_factory, tmp_path):
    config = {"models": [fake_model("small", fake_upstream.url),
                         fake_model("emb", fake_upstream.url, kind="embeddings")],
              "ledger": {"url": str(tmp_path / "ledger.db"), "flush_interval_ms": 50}}
    return gateway_factory(config, env={"MARGIN_MASTER_KEY": MASTER})


def test_schemathesis_finds_no_server_error(live, tmp_path):
    doc = httpx.get(live.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["schemas"]["ChatRequest"]["properties"]["model"]["enum"] == \
        ["small"]
    for seed in (14, 15, 16):
        run = _schemathesis(live.url, seed, tmp_path / f"st-{seed}")
        # CPython 3.11.7's ast.parse can fail deep in Hypothesis's strategy repr
        # ("AST constructor recursion depth mismatch", fixed in later CPythons): a crash of
        # the generator, not an answer of ours; only then is the next seed tried.
        if "recursion depth mismatch" not in run.stdout or "FAILURES" in run.stdout:
            break
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "No issues found" in run.stdout


def _schemathesis(url: str, seed: int, report_dir) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", url + "/openapi.json",
         "--header", f"Authorization: Bearer {MASTER}",
         "--checks", "not_a_server_error,response_schema_conformance,"
                     "status_code_conformance,content_type_conformance",
         "--max-examples", "25", "--seed", str(seed), "--workers", "2",
         "--phases", "examples,coverage,fuzzing", "--report-dir", str(report_dir)],
        capture_output=True, text=True, timeout=400, cwd=report_dir.parent)  # its cache dir
