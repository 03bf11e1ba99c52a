"""Retrieval-context pruning: a long pasted document is cut into chunks and only the chunks
most similar to the question are sent, within a token budget, in their original order.

Where chunks were left out, a gap marker (``[…]``) stands in, so the model knows the text is
an excerpt. Similarity is the cosine of MiniLM embeddings when the local model is available,
else BM25 over words (a lexical score with no model at all).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from margin.compression.text import paragraphs

Count = Callable[[str], int]
Scorer = Callable[[str, list[str]], list[float]]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\w+")
_STOP = frozenset(
    "a an and are as at be by did do does for from had has have how i in is it its me my "
    "of on or so that the their them then there these they this to was we were what when "
    "where which who why will with you your".split())


# -- chunking ---------------------------------------------------------------------------
def _pieces(text: str, chunk_tokens: int, count: Count) -> list[tuple[str, str]]:
    """(separator before, text) pieces no larger than a chunk: paragraphs, else sentences,
    else windows of words."""
    out: list[tuple[str, str]] = []
    for para in paragraphs(text):
        if count(para) <= chunk_tokens:
            out.append(("\n\n", para))
            continue
        sep = "\n\n"
        for sentence in _SENTENCE_END.split(para):
            if count(sentence) <= chunk_tokens:
                out.append((sep, sentence))
            else:
                words = sentence.split(" ")
                # Words per window, from this sentence's own tokens-per-word ratio.
                per = max(1, int(len(words) * chunk_tokens / max(count(sentence), 1)))
                for k in range(0, len(words), per):
                    out.append((sep if k == 0 else " ", " ".join(words[k:k + per])))
            sep = " "
    return out


def split_chunks(text: str, chunk_tokens: int, count: Count) -> list[str]:
    """Consecutive pieces merged up to ``chunk_tokens`` each."""
    chunks: list[str] = []
    current = ""
    size = 0
    for sep, piece in _pieces(text, chunk_tokens, count):
        n = count(piece)
        if current and size + n > chunk_tokens:
            chunks.append(current)
            current, size = "", 0
        current = piece if not current else current + sep + piece
        size += n
    if current:
        chunks.append(current)
    return chunks


# -- similarity -------------------------------------------------------------------------
def _terms(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def lexical_scores(query: str, chunks: list[str], k1: float = 1.2, b: float = 0.75
                   ) -> list[float]:
    """BM25 of each chunk for the query, IDF taken over the chunks themselves."""
    docs = [Counter(_terms(c)) for c in chunks]
    if not docs:
        return []
    lengths = [sum(d.values()) for d in docs]
    avg = sum(lengths) / len(lengths) or 1.0
    df: Counter[str] = Counter()
    for d in docs:
        df.update(d.keys())
    n = len(docs)
    scores = []
    for d, length in zip(docs, lengths):
        s = 0.0
        for term in set(_terms(query)):
            tf = d.get(term, 0)
            if not tf:
                continue
            idf = math.log(1.0 + (n - df[term] + 0.5) / (df[term] + 0.5))
            s += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avg))
        scores.append(s)
    return scores


def embedding_scorer(embedder: Any) -> Scorer:
    """Cosine similarity with a sentence embedder whose ``encode`` returns unit vectors."""
    def score(query: str, chunks: list[str]) -> list[float]:
        vectors = embedder.encode([query, *chunks])
        return [float(v) for v in vectors[1:] @ vectors[0]]
    return score


# -- selection --------------------------------------------------------------------------
@dataclass(slots=True)
class PruneResult:
    text: str
    chunks_total: int
    chunks_kept: int
    tokens_before: int
    tokens_after: int


def select(chunks: list[str], scores: list[float], budget: int, count: Count) -> list[int]:
    """Indices of the best-scoring chunks that fit the budget, in document order."""
    order = sorted(range(len(chunks)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    used = 0
    for i in order:
        n = count(chunks[i])
        if used + n <= budget:
            kept.append(i)
            used += n
    return sorted(kept)


def split_question(text: str, budget: int, count: Count) -> tuple[str, str]:
    """(context, question) of a message that holds both: the question is its last paragraph
    (or, when that is long, its last sentence)."""
    paras = paragraphs(text)
    if len(paras) >= 2 and count(paras[-1]) <= budget // 2:
        return "\n\n".join(paras[:-1]), paras[-1]
    sentences = _SENTENCE_END.split(text.rstrip())
    if len(sentences) >= 2 and count(sentences[-1]) <= budget // 2:
        return " ".join(sentences[:-1]), sentences[-1]
    return text, ""


def prune(context: str, question: str, budget: int, chunk_tokens: int, count: Count,
          scorer: Scorer, gap_marker: str) -> PruneResult:
    before = count(context)
    chunks = split_chunks(context, chunk_tokens, count)
    if before <= budget or len(chunks) <= 1 or not question.strip():
        return PruneResult(context, len(chunks), len(chunks), before, before)
    kept = select(chunks, scorer(question, chunks), budget, count)
    parts: list[str] = []
    previous = -1
    for i in kept:
        if i != previous + 1:
            parts.append(gap_marker)
        parts.append(chunks[i])
        previous = i
    if previous != len(chunks) - 1:
        parts.append(gap_marker)
    text = "\n\n".join(parts)
    return PruneResult(text, len(chunks), len(kept), before, count(text))
