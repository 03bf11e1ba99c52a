"""The semantic cache on its own encoder (``encoder_path``) over real HTTP: the gateway
embeds with the built model and applies the verifier calibrated with it."""

from __future__ import annotations

import pytest

from tests.cache.test_semantic_stage import ask
from tests.cli.tiny_encoder import artefacts_dir, build_tiny
from tests.conftest import fake_model, has_local_models

pytestmark = pytest.mark.skipif(not has_local_models(),
                                reason="the 'local' extra (MiniLM) is not installed")


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("enc") / "cache-encoder"
    result = build_tiny(out)
    assert result.exit_code == 0, result.output
    return out


def test_paraphrase_hits_and_hard_negatives_miss(encoder_dir, fake_upstream, gateway_factory,
                                                 tmp_path):
    gw = gateway_factory({"models": [fake_model("small", fake_upstream.url)],
                          "ledger": {"url": str(tmp_path / "l.db")},
                          "cache": {"exact": {"enabled": False},
                                    # A threshold calibrated on 300 pairs is noise:
                                    # set one, keep the encoder's own verifier.
                                    "semantic": {"enabled": True, "threshold": 0.8,
                                                 "encoder_path": str(encoder_dir)}}},
                         env={"MARGIN_CACHE_DIR": str(artefacts_dir(encoder_dir))})
    first = ask(gw, "How do I learn to play the guitar quickly?")
    assert first.headers["x-margin-cache"] == "miss"
    para = ask(gw, "How can I learn to play guitar quickly?")
    assert para.headers["x-margin-cache"] == "semantic"
    assert para.json()["choices"] == first.json()["choices"]
    ask(gw, "What is the capital of France?")
    assert ask(gw, "What is the capital of Germany?").headers["x-margin-cache"] == "miss"
    ask(gw, "What is the population of Canada in 2020?")
    assert ask(gw, "What is the population of Canada in 2021?").headers["x-margin-cache"] == "miss"


def test_a_missing_encoder_stops_the_gateway_with_the_build_command(fake_upstream,
                                                                    gateway_factory, tmp_path):
    with pytest.raises(Exception) as info:
        gateway_factory({"models": [fake_model("small", fake_upstream.url)],
                         "ledger": {"url": str(tmp_path / "l.db")},
                         "cache": {"semantic": {"enabled": True,
                                                "encoder_path": str(tmp_path / "none")}}})
    assert "margin cache build-encoder" in str(info.value)
