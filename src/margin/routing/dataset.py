"""Routing rows (prompt, weak_correct, strong_correct), their features and cached embeddings.

The row format is RouteLLM's evaluation rows as shipped in ``shared/data/routing/``:
``{"prompt", "weak_correct", "strong_correct"}`` plus optional ``source``,
``weak_response`` / ``strong_response`` (used only to estimate output tokens for costs).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from margin.errors import InputError
from margin.routing.features import CHARS_PER_TOKEN, extract_features


@dataclass(frozen=True)
class RoutingRow:
    prompt: str
    weak_correct: bool
    strong_correct: bool
    source: str = ""
    weak_output_chars: int | None = None
    strong_output_chars: int | None = None


def _bool(value: object, field: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    raise InputError(f"{where}: {field} must be true/false (or 0/1), got {value!r}")


def parse_row(obj: object, where: str) -> RoutingRow:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise InputError(f"{where}: missing 'prompt' (a non-empty string)")
    for field in ("weak_correct", "strong_correct"):
        if field not in obj:
            raise InputError(f"{where}: missing '{field}'")
    weak_response, strong_response = obj.get("weak_response"), obj.get("strong_response")
    return RoutingRow(
        prompt=prompt,
        weak_correct=_bool(obj["weak_correct"], "weak_correct", where),
        strong_correct=_bool(obj["strong_correct"], "strong_correct", where),
        source=str(obj.get("source") or ""),
        weak_output_chars=len(weak_response) if isinstance(weak_response, str) else None,
        strong_output_chars=len(strong_response) if isinstance(strong_response, str) else None,
    )


def read_rows(path: str | Path) -> list[RoutingRow]:
    """All rows of a JSONL file; a bad line raises ``InputError`` naming file and line."""
    path = Path(path)
    rows: list[RoutingRow] = []
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{where}: not JSON ({exc.msg})") from exc
                rows.append(parse_row(obj, where))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows


def correctness(rows: Sequence[RoutingRow]) -> tuple[np.ndarray, np.ndarray]:
    weak = np.fromiter((r.weak_correct for r in rows), dtype=np.float64, count=len(rows))
    strong = np.fromiter((r.strong_correct for r in rows), dtype=np.float64, count=len(rows))
    return weak, strong


def feature_matrix(prompts: Sequence[str]) -> np.ndarray:
    return np.asarray([extract_features(p) for p in prompts], dtype=np.float32).reshape(
        len(prompts), -1)


@dataclass(frozen=True)
class TokenCounts:
    """Approximate tokens per row for pricing (characters / 4)."""

    input_tokens: np.ndarray
    weak_output_tokens: np.ndarray
    strong_output_tokens: np.ndarray


def token_counts(rows: Sequence[RoutingRow], default_output_tokens: float) -> TokenCounts:
    """Prompt tokens from the prompt; output tokens from the stored response where there is one
    (GSM8K rows), else ``default_output_tokens`` (MMLU rows are scored on one answer letter)."""
    def out(chars: int | None) -> float:
        return default_output_tokens if chars is None else chars / CHARS_PER_TOKEN
    return TokenCounts(
        input_tokens=np.asarray([len(r.prompt) / CHARS_PER_TOKEN for r in rows]),
        weak_output_tokens=np.asarray([out(r.weak_output_chars) for r in rows]),
        strong_output_tokens=np.asarray([out(r.strong_output_chars) for r in rows]),
    )


def cached_embeddings(texts: Sequence[str], encode: Callable[[list[str]], np.ndarray],
                      cache_dir: str | Path | None, model_name: str) -> np.ndarray:
    """Embeddings of ``texts``, read from / written to ``cache_dir`` keyed by content hash."""
    if cache_dir is None:
        return np.asarray(encode(list(texts)), dtype=np.float32)
    digest = hashlib.sha256(model_name.encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    path = Path(cache_dir) / f"embeddings-{digest.hexdigest()[:20]}.npy"
    if path.exists():
        cached = np.load(path)
        if cached.shape[0] == len(texts):
            return cached
    vectors = np.asarray(encode(list(texts)), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    return vectors
