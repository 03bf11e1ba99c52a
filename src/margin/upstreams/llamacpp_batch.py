"""Several requests decoded together on the local llama.cpp model (``n_parallel`` > 1).

llama.cpp holds many sequences in one context and evaluates one token of each in a single
``llama_decode``, so the weights are read once per step for all of them. ``BatchedGenerator``
owns a second context on the same weights (``n_seq`` sequences sharing one KV cache of
``n_seq`` × ``n_ctx`` cells) and runs a batch of prompts to completion: every prompt in one
pass, then one token per unfinished sequence per step until each stops (end-of-generation
token, a stop string, ``max_tokens``).

Sampling is done here, in numpy, per sequence — greedy at temperature 0, else temperature and
top-p with the request's own seed — so requests with different settings share a step. Token
values can differ slightly from a one-at-a-time run (llama.cpp's batched kernels round
differently), so a greedy answer is not always identical to the unbatched one.

Everything here runs on the model's single worker thread.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class GenJob:
    prompt_tokens: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GenResult:
    text: str
    completion_tokens: int
    finish_reason: str  # "stop" | "length"


@dataclass(slots=True)
class _Seq:
    job: GenJob
    rng: np.random.Generator
    pos: int
    out: bytearray = field(default_factory=bytearray)
    n_out: int = 0
    text: str = ""
    done: str | None = None


def sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy at temperature 0, else softmax(logits / T) cut to the top-p nucleus."""
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        keep = int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1
        idx = order[:keep]
        return int(idx[rng.choice(len(idx), p=p[idx] / p[idx].sum())])
    return int(rng.choice(len(p), p=p))


class BatchedGenerator:
    """Decodes up to ``n_seq`` prompts at once in a context of its own on ``llm``'s weights."""

    def __init__(self, llm: Any, n_seq: int, n_ctx_per_seq: int, n_threads: int) -> None:
        import llama_cpp
        from llama_cpp import _internals

        self._lc = llama_cpp
        self.llm = llm
        self.n_seq = n_seq
        self.n_ctx_per_seq = n_ctx_per_seq
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx_per_seq * n_seq
        params.n_batch = params.n_ubatch = 512
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = n_threads
        self._ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self._batch = _internals.LlamaBatch(n_tokens=params.n_batch, embd=0, n_seq_max=n_seq,
                                            verbose=False)
        self._capacity = int(params.n_batch)
        self._n_vocab = int(llm.n_vocab())
        self._eog = {llm.token_eos()}
        vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
        self._is_eog = lambda t: bool(llama_cpp.llama_vocab_is_eog(vocab, t))

    def fits(self, job: GenJob) -> bool:
        return len(job.prompt_tokens) + job.max_tokens <= self.n_ctx_per_seq

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()

    def generate(self, jobs: list[GenJob]) -> list[GenResult]:
        if len(jobs) > self.n_seq:
            raise ValueError(f"{len(jobs)} sequences in a context made for {self.n_seq}")
        for job in jobs:
            if not self.fits(job):
                raise ValueError(f"prompt ({len(job.prompt_tokens)} tokens) + max_tokens "
                                 f"({job.max_tokens}) exceed the context ({self.n_ctx_per_seq})")
        self._lc.llama_memory_clear(self._lc.llama_get_memory(self._ctx.ctx), True)
        seqs = [_Seq(job, np.random.default_rng(job.seed), len(job.prompt_tokens))
                for job in jobs]
        # Every prompt in one pass; logits only at each prompt's last token.
        logits = self._decode([(tok, i, s, i == len(q.job.prompt_tokens) - 1)
                               for s, q in enumerate(seqs)
                               for i, tok in enumerate(q.job.prompt_tokens)])
        while True:
            step = []
            for s, q in enumerate(seqs):
                if q.done:
                    continue
                token = sample(logits[s], q.job.temperature, q.job.top_p, q.rng)
                self._accept(q, token)
                if not q.done:
                    step.append((token, q.pos, s, True))
                    q.pos += 1
            if not step:
                return [GenResult(q.text, q.n_out, q.done or "length") for q in seqs]
            logits = self._decode(step)

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> dict[int, np.ndarray]:
        """Evaluate (token, position, sequence, wants logits) entries; the logits wanted,
        by sequence."""
        out: dict[int, np.ndarray] = {}
        b = self._batch.batch
        as_floats = ctypes.POINTER(ctypes.c_float)
        for start in range(0, len(entries), self._capacity):
            part = entries[start:start + self._capacity]
            b.n_tokens = len(part)
            for j, (tok, pos, seq, want) in enumerate(part):
                b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = tok, pos, 1, want
                b.seq_id[j][0] = seq
            rc = self._lc.llama_decode(self._ctx.ctx, b)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            for j, (_, _, seq, want) in enumerate(part):
                if want:
                    ptr = ctypes.cast(self._lc.llama_get_logits_ith(self._ctx.ctx, j), as_floats)
                    out[seq] = np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).copy()
        return out

    def _accept(self, q: _Seq, token: int) -> None:
        if token in self._eog or self._is_eog(token):
            q.done = "stop"
            return
        q.out += self.llm.detokenize([token])
        q.n_out += 1
        text = q.out.decode("utf-8", errors="ignore")
        for stop in q.job.stop:
            cut = text.find(stop) if stop else -1
            if cut >= 0:
                q.text, q.done = text[:cut], "stop"
                return
        q.text = text
        if q.n_out >= q.job.max_tokens:
            q.done = "length"
