"""``margin cache build-encoder``: deterministic builds, and clear errors when loading one."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from click.testing import CliRunner

from margin.cache.semantic import SemanticCache, SemanticCacheConfig
from margin.cache.verifier import ENCODER_INFO, ENCODER_VERIFIER, encoder_verifier
from margin.cli.cache import cache
from margin.errors import ConfigError
from tests.cli.tiny_encoder import build_tiny


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    return [(root / name, build_tiny(root / name)) for name in ("one", "two")]


def test_two_builds_write_the_same_weights_and_verifier(two_builds) -> None:
    sums = []
    for out, result in two_builds:
        assert result.exit_code == 0, result.output
        assert f"wrote {out}" in result.stdout
        sums.append(re.search(r"weights sha256 ([0-9a-f]{64})", result.stdout).group(1))
        info = json.loads((out / ENCODER_INFO).read_text())
        assert info["checksum"] == sums[-1] and info["training"]["rows"] > 0
    assert sums[0] == sums[1]
    (a, _), (b, _) = two_builds
    assert (a / ENCODER_VERIFIER).read_bytes() == (b / ENCODER_VERIFIER).read_bytes()
    verifier = encoder_verifier(a)
    assert verifier.meta["encoder_checksum"] == sums[0]
    assert 0.0 < verifier.operating_point.threshold <= 1.0


def test_the_cache_loads_the_encoders_verifier(two_builds) -> None:
    out = two_builds[0][0]
    c = SemanticCache(SemanticCacheConfig(enabled=True, encoder_path=str(out)))
    assert c.threshold == encoder_verifier(out).operating_point.threshold


def test_loading_errors_say_what_is_wrong_and_how_to_build(two_builds, tmp_path) -> None:
    with pytest.raises(ConfigError, match="no semantic cache encoder in .*margin cache "
                                          "build-encoder"):
        encoder_verifier(tmp_path / "nothing")
    broken = tmp_path / "broken"
    shutil.copytree(two_builds[0][0], broken)
    (broken / ENCODER_VERIFIER).unlink()
    with pytest.raises(ConfigError, match="lacks verifier.json"):
        SemanticCache(SemanticCacheConfig(enabled=True, encoder_path=str(broken)))
    # A verifier from another build (other weights) is refused, not silently misapplied.
    shutil.copy(two_builds[0][0] / ENCODER_VERIFIER, broken / ENCODER_VERIFIER)
    info = json.loads((broken / ENCODER_INFO).read_text())
    (broken / ENCODER_INFO).write_text(json.dumps({**info, "checksum": "0" * 64}))
    with pytest.raises(ConfigError, match="fitted for other encoder weights"):
        encoder_verifier(broken)


def test_bad_pairs_exit_2(tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text_a": "x"}\n')
    result = CliRunner().invoke(cache, ["build-encoder", "--pairs", str(bad),
                                        "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
