"""Fine-tuning the bundled MiniLM into the semantic cache's own question encoder.

The cache asks "is this stored question the same question?" with a cosine over embeddings,
and the general-purpose MiniLM puts hard negatives (another number, a negation, another
city) almost as close as paraphrases. Contrastive training on labelled question pairs moves
them apart: every label-1 pair of the fit part is an (anchor, positive) row, its hard
negative is a label-0 partner of either question where one exists, and every other
positive and negative in the batch serves as an in-batch negative (the multiple-negatives
ranking loss, in both directions).

Deterministic by construction: rows sorted by text, one shuffle from ``seed``, torch
seeded and single-threaded by default, no dropout randomness outside the seeded generator.
The result is a sentence-transformers folder, so ``LocalEmbedder(path)`` (and its ONNX
export) run it like the bundled model.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from margin.bench.lab.pairs import PairSet


@dataclass(frozen=True)
class TuneConfig:
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_share: float = 0.1
    scale: float = 20.0        # cosine → logit in the ranking loss
    max_length: int = 40       # QQP questions average ~16 tokens; longer ones are cut
    freeze_word_embeddings: bool = True  # a 30k×384 table barely moves in one epoch; its
                                         # optimizer step is a third of the step's cost
    seed: int = 0
    threads: int = 1
    max_rows: int | None = None  # a cap, for quick builds on a subset


def training_triplets(part: PairSet, seed: int) -> list[tuple[str, str, str | None]]:
    """(anchor, positive, hard negative or None) from the part's labelled pairs."""
    texts = part.texts
    negatives: dict[int, list[int]] = {}
    for x, y, lab in zip(part.a.tolist(), part.b.tolist(), part.label.tolist()):
        if lab == 0:
            negatives.setdefault(x, []).append(y)
            negatives.setdefault(y, []).append(x)
    rows: list[tuple[str, str, str | None]] = []
    for x, y, lab in zip(part.a.tolist(), part.b.tolist(), part.label.tolist()):
        if lab != 1 or texts[x] == texts[y]:
            continue
        hard = sorted({texts[n] for n in negatives.get(x, []) + negatives.get(y, [])})
        rows.append((texts[x], texts[y], hard[0] if hard else None))
    rows.sort(key=lambda r: (r[0], r[1], r[2] or ""))
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[i] for i in order]


def length_batches(rows: list[tuple[str, str, str | None]], size: int,
                   bucket: int = 16) -> list[list[tuple[str, str, str | None]]]:
    """Batches of similar length (less padding), in an order fixed by the shuffled rows:
    each run of ``bucket`` batches is sorted by length before it is cut."""
    out = []
    span = size * bucket
    for start in range(0, len(rows), span):
        chunk = sorted(rows[start : start + span], key=lambda r: len(r[0]) + len(r[1]))
        out += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    return out


def _mean_pool(hidden: Any, mask: Any) -> Any:
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def fine_tune(base_dir: Path, part: PairSet, out_dir: Path, cfg: TuneConfig = TuneConfig(),
              progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """Train from ``base_dir`` on ``part``; write a sentence-transformers folder to
    ``out_dir``. Returns what was done (rows, steps, final loss, checksum)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    rows = training_triplets(part, cfg.seed)
    if cfg.max_rows is not None:
        rows = rows[: cfg.max_rows]
    if not rows:
        raise ValueError("no paraphrase pairs to train on")
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModel.from_pretrained(str(base_dir))
    model.train()
    if cfg.freeze_word_embeddings:
        model.embeddings.word_embeddings.weight.requires_grad_(False)
    batches = length_batches(rows, cfg.batch_size)
    steps = len(batches) * cfg.epochs
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                            lr=cfg.learning_rate)
    warm = max(1, int(steps * cfg.warmup_share))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))

    def embed(texts: list[str]) -> Any:
        enc = tok(texts, truncation=True, max_length=cfg.max_length, padding=True,
                  return_tensors="pt")
        return _mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])

    step, loss_v = 0, float("nan")
    for _ in range(cfg.epochs):
        for batch in batches:
            anchors = [r[0] for r in batch]
            positives = [r[1] for r in batch]
            hard = [r[2] for r in batch if r[2] is not None]
            vecs = embed(anchors + positives + hard)
            a, p, n = vecs[: len(batch)], vecs[len(batch) : 2 * len(batch)], vecs[2 * len(batch):]
            target = torch.arange(len(batch))
            forward = cfg.scale * a @ torch.cat([p, n]).T
            backward = cfg.scale * p @ torch.cat([a, n]).T
            loss = (torch.nn.functional.cross_entropy(forward, target)
                    + torch.nn.functional.cross_entropy(backward, target)) / 2
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            loss_v = float(loss.detach())
            if progress is not None:
                progress(step, steps, loss_v)
    model.eval()
    save_encoder(base_dir, model, tok, out_dir)
    info = {"rows": len(rows), "with_hard_negative": sum(r[2] is not None for r in rows),
            "steps": steps, "final_loss": round(loss_v, 4), "config": asdict(cfg),
            "checksum": weights_checksum(out_dir)}
    return info


def save_encoder(base_dir: Path, model: Any, tok: Any, out_dir: Path) -> None:
    """The base folder's layout (pooling, sentence-transformers config) with new weights."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in sorted(base_dir.iterdir()):
        if item.name in ("model.safetensors", "pytorch_model.bin", "onnx", "openvino"):
            continue
        dest = out_dir / item.name
        if item.is_dir():
            shutil.copytree(item, dest, dirs_exist_ok=True)
        else:
            shutil.copy2(item, dest)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tok.save_pretrained(str(out_dir))


def weights_checksum(model_dir: Path) -> str:
    """SHA-256 over the weights tensors' bytes (not the file, whose header may vary)."""
    from safetensors.numpy import load_file

    tensors = load_file(str(model_dir / "model.safetensors"))
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tensors[name]).tobytes())
    return h.hexdigest()
