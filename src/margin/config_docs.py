"""docs/configuration.md, written from the settings classes themselves.

Each section of ``margin.yaml`` is a settings class: its docstring is the section's prose,
the docstrings under its fields are the table's descriptions, and its ``yaml_example`` is the
example shown (and validated: ``tests/test_config_docs.py`` loads every example). So the
document cannot drift from the code: ``margin config docs --check`` fails when the committed
file differs from what this module writes.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from margin.config import ModelConfig, Settings
from margin.upstreams.registry import builtin_providers

INTRO = """\
# Configuration

<!-- Written by `margin config docs` from the settings classes in src/margin; do not edit by
hand: change the docstrings there and run `margin config docs` again. -->

One YAML file: `margin serve --config margin.yaml` (or `MARGIN_CONFIG=margin.yaml`). The
commands that read the ledger or the keys (`margin spend`, `margin ledger`, `margin anomalies`,
`margin keys`) take the same `--config` and use the ledger configured there (`--db` still
wins). `margin config check margin.yaml` validates a file and prints the settings in force,
secrets masked; a mistake is reported as `file:line: what is wrong`.

Every field can also be set from the environment as `MARGIN_<SECTION>__<FIELD>` (for example
`MARGIN_LEDGER__URL=postgresql://…`; the value is read as YAML); short forms:
`MARGIN_DATABASE_URL`, `MARGIN_REDIS_URL`, `MARGIN_HOST`, `MARGIN_PORT`, `MARGIN_LOG_CONTENT`.
Precedence: defaults < file < environment < command-line flags. Unknown keys are errors: a
misspelt field never silently does nothing. Secrets are never written in the file: a model
names the environment variable that holds its key (`api_key_env`).

With no file (or no `models:`), `margin serve` serves the bundled local models: `smollm2`
(SmolLM2-135M-Instruct, Q4_1 GGUF, via llama.cpp) and `all-minilm-l6-v2` (sentence
embeddings, batched).

Units are in the field names: `_s` seconds, `_ms` milliseconds, `_usd` US dollars,
`_pct` percent, `_mtok` per million tokens, `rpm`/`tpm` requests/tokens per minute.
"""

_UNITS = (("_per_mtok", "USD per million tokens"), ("_hour_usd", "USD per hour"), ("_usd", "USD"), ("_ms", "milliseconds"),
          ("_s", "seconds"), ("_pct", "percent"), ("_bytes", "bytes"), ("_days", "days"),
          ("_tokens", "tokens"), ("_chars", "characters"))


def unit_of(name: str) -> str:
    if name in ("rpm",):
        return "requests per minute"
    if name in ("tpm",):
        return "tokens per minute"
    for suffix, unit in _UNITS:
        if name.endswith(suffix):
            return unit
    return ""


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The settings classes an annotation holds (directly, in a list/dict, in a union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out += _models_in(arg)
    return out


def type_text(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        parts = [type_text(a) for a in args if a is not type(None)]
        return " \\| ".join(parts) + (" or unset" if type(None) in args else "")
    if origin in (list, tuple, set):
        return f"list of {type_text(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {type_text(args[0])} → {type_text(args[1])}" if args else "map"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    else:
        value = info.default
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "(section)"
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, (list, tuple)) and not value:
        return "`[]`"
    if isinstance(value, dict) and not value:
        return "`{}`"
    if isinstance(value, int) and abs(value) >= 1_000_000 and value % (1024 * 1024) == 0:
        return f"`{value}` ({value // (1024 * 1024)} MiB)"
    return f"`{value}`"


def _markdown(text: str) -> str:
    """Docstrings use reStructuredText's double backticks; Markdown wants single ones."""
    return text.replace("``", "`")


def _prose(cls: type) -> str:
    doc = cls.__dict__.get("__doc__") or ""
    return _markdown(inspect.cleandoc(doc)) if doc else ""


@dataclass
class _Writer:
    lines: list[str] = field(default_factory=list)
    seen: dict[type, str] = field(default_factory=dict)
    # Classes with a section of their own at the top (``compression``): never nested.
    top: dict[type, str] = field(default_factory=dict)
    # Fields documented once elsewhere (the common part of every model).
    skip: frozenset[str] = frozenset()

    def section(self, path: str, cls: type[BaseModel], level: int, note: str = "",
                skip: frozenset[str] = frozenset()) -> None:
        if cls in self.seen or (cls in self.top and self.top[cls] != path):
            return
        self.seen[cls] = path
        self.lines += [f"{'#' * level} `{path}`", ""]
        if note:
            self.lines += [note, ""]
        prose = _prose(cls)
        if prose:
            self.lines += [prose, ""]
        fields = [(n, f) for n, f in cls.model_fields.items() if n not in skip]
        if fields:
            self.lines += ["| field | type | default | unit | what it does |",
                           "| --- | --- | --- | --- | --- |"]
        children: list[tuple[str, type[BaseModel], str]] = []
        for name, info in fields:
            nested = _models_in(info.annotation)
            kind = type_text(info.annotation)
            desc = _markdown(" ".join((info.description or "").split()))
            if nested:
                suffix = "[]" if "list of" in kind else ".<name>" if "map of" in kind else ""
                places = []
                for model in nested:
                    tag = self._variant_tag(model, len(nested) > 1)
                    child = f"{path}.{name}{suffix}" + (f" ({tag})" if tag else "")
                    place = self.top.get(model) or self.seen.get(model) or child
                    places.append(f"`{place}`")
                    children.append((child, model, ""))
                desc = (desc + " " if desc else "") + f"See {', '.join(dict.fromkeys(places))}."
            self.lines.append(f"| `{name}` | {kind} | {default_text(info)} | "
                              f"{unit_of(name)} | {desc} |")
        if fields:
            self.lines.append("")
        example = getattr(cls, "yaml_example", None)
        if isinstance(example, str) and example.strip():
            self.lines += ["```yaml", inspect.cleandoc(example), "```", ""]
        for child, model, tag in children:
            self.section(child, model, min(level + 1, 4), tag)

    @staticmethod
    def _variant_tag(model: type[BaseModel], several: bool) -> str:
        if not several:
            return ""
        for key in ("kind", "provider"):
            f = model.model_fields.get(key)
            if f is not None and f.default not in (None, PydanticUndefined):
                return f"{key}: {f.default}"
        return ""


def _top_level(settings: type[Settings]) -> Iterator[tuple[str, FieldInfo]]:
    yield from settings.model_fields.items()


def render(settings: type[Settings] = Settings) -> str:
    w = _Writer()
    for name, info in _top_level(settings):
        if name != "models":
            for model in _models_in(info.annotation):
                w.top[model] = f"{name}[]" if typing.get_origin(info.annotation) is list else name
    w.lines.append(INTRO)
    scalars = [(n, f) for n, f in _top_level(settings) if not _models_in(f.annotation)]
    if scalars:
        w.lines += ["## Top-level settings", "",
                    "| field | type | default | unit | what it does |",
                    "| --- | --- | --- | --- | --- |"]
        for name, info in scalars:
            desc = " ".join((info.description or "").split())
            w.lines.append(f"| `{name}` | {type_text(info.annotation)} | {default_text(info)} | "
                           f"{unit_of(name)} | {desc} |")
        w.lines.append("")
    for name, info in _top_level(settings):
        if name == "models":
            w.lines += ["## `models`", "", _markdown(" ".join((info.description or "").split())),
                        ""]
            w.section("models[] (every provider)", ModelConfig, 3)
            common = frozenset(ModelConfig.model_fields)
            for provider in builtin_providers():
                w.section(f"models[] (provider: {provider.name})", provider.config_class, 3,
                          skip=common)
            continue
        for model in _models_in(info.annotation):
            path = f"{name}[]" if typing.get_origin(info.annotation) is list else name
            w.section(path, model, 2)
    text = "\n".join(w.lines).rstrip() + "\n"
    return text


def missing_descriptions(settings: type[Settings] = Settings) -> list[str]:
    """``section.field`` of every field with no description (each must say what it does)."""
    out: list[str] = []
    seen: set[type] = set()

    def walk(path: str, cls: type[BaseModel]) -> None:
        if cls in seen:
            return
        seen.add(cls)
        for name, info in cls.model_fields.items():
            if not (info.description or "").strip():
                out.append(f"{path}.{name}")
            for model in _models_in(info.annotation):
                walk(f"{path}.{name}", model)

    for name, info in settings.model_fields.items():
        if not (info.description or "").strip():
            out.append(name)
        if name == "models":
            for provider in builtin_providers():
                walk(f"models({provider.name})", provider.config_class)
            continue
        for model in _models_in(info.annotation):
            walk(name, model)
    return out
