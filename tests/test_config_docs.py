"""docs/configuration.md is written from the settings classes: it must be current, every
field must say what it does, and every example must be a valid configuration."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from margin.config import Settings
from margin.config_docs import missing_descriptions, render

REPO = Path(__file__).resolve().parents[1]


def _margin(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "margin.cli.main", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_committed_configuration_docs_are_current():
    r = _margin("config", "docs", "--check")
    assert r.returncode == 0, r.stderr


def test_a_stale_file_fails_the_check(tmp_path):
    stale = tmp_path / "configuration.md"
    stale.write_text(render().replace("Largest request body", "Biggest body"))
    r = _margin("config", "docs", "--check", "--out", str(stale))
    assert r.returncode == 1
    assert "stale" in r.stderr and "Biggest body" in r.stderr


def test_every_field_says_what_it_does():
    assert missing_descriptions() == []


def _sections() -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []

    def walk(cls: type) -> None:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls in seen:
            return
        seen.append(cls)
        for info in cls.model_fields.values():
            for arg in _flatten(info.annotation):
                walk(arg)

    from margin.upstreams.registry import builtin_providers
    walk(Settings)
    for p in builtin_providers():
        walk(p.config_class)
    return seen


def _flatten(annotation):
    import typing
    yield annotation
    for arg in typing.get_args(annotation):
        yield from _flatten(arg)


@pytest.mark.parametrize("cls", [c for c in _sections() if getattr(c, "yaml_example", None)],
                         ids=lambda c: c.__name__)
def test_each_example_is_a_valid_configuration(cls):
    example = yaml.safe_load(inspect.cleandoc(cls.yaml_example))
    Settings.model_validate(example)
    # and it appears in the document
    assert inspect.cleandoc(cls.yaml_example) in render()


def test_examples_cover_every_top_level_section():
    with_example = {c for c in _sections() if getattr(c, "yaml_example", None)}
    for name, info in Settings.model_fields.items():
        classes = [c for c in _flatten(info.annotation)
                   if isinstance(c, type) and issubclass(c, BaseModel)]
        if name == "models" or not classes:
            continue
        assert any(c in with_example for c in classes), f"section {name} has no example"
