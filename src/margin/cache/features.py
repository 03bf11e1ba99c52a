"""Pair features for the semantic cache's verifier: how a query and a cached question differ.

Cosine similarity says two questions are about the same thing; it does not say they ask the
same thing. The features below describe what cosine misses — words of one question absent
from the other, a changed number or negation, a different question word ("how" vs "why"),
very different lengths — plus the element-wise products and differences of the two
embeddings, which let a linear model weigh *which* directions of the embedding differ.

Everything is numpy and the standard library: the verifier runs at serve time without
scikit-learn or torch. ``TextInfo`` is computed once per text (at insert for cached entries).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache

import numpy as np

from margin.cache.guards import marks, tokens

STOPWORDS = frozenset("""
a an the and or but if then so than that this these those there here of to in on at by for
with from into onto about as is are was were be been being am do does did doing done have has
had having i me my mine we us our you your yours he him his she her it its they them their
what which who whom whose when where why how can could should would will shall may might must
some any all each every much many more most such very just also too only own same other
get got s t d ll m re ve y one ones thing things way ways someone something anyone anything
people person good best better really possible
""".split())

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")

QUESTION_WORDS = ("what", "which", "who", "whom", "whose", "when", "where", "why", "how",
                  "is", "are", "was", "were", "do", "does", "did", "can", "could", "should",
                  "would", "will", "have", "has")

# Function words whose presence in only one of the two questions often changes what is
# asked ("when" vs "where", "best" vs "easiest", "more than one"): one feature each.
DIFF_WORDS = (
    "what", "which", "who", "when", "where", "why", "how", "is", "are", "can", "should",
    "do", "does", "did", "will", "would", "best", "most", "more", "less", "better", "worst",
    "first", "only", "all", "some", "any", "many", "much", "difference", "between", "vs",
    "or", "and", "without", "you", "your", "my", "i", "me", "we", "they", "he", "she",
    "it", "ever", "still", "after", "before", "during", "if", "to", "in", "for", "from",
)

SCALAR_FEATURES = (
    "cosine", "word_jaccard", "content_jaccard", "unmatched_min", "unmatched_max",
    "unmatched_count", "char3_jaccard", "number_mismatch", "negation_mismatch",
    "has_number", "length_ratio", "length_gap", "question_word_same", "question_word_vec_dot",
    "sequence_ratio", "name_mismatch", "unmatched_longest", "unmatched_chars",
) + tuple(f"diff_{w}" for w in DIFF_WORDS)


@dataclass(frozen=True, slots=True)
class TextInfo:
    token_seq: tuple[str, ...]  # lower-cased tokens in order (for the order-aware ratio)
    names: frozenset[str]       # capitalised words after the first (proper nouns, mostly)
    raw_words: frozenset[str]   # lower-cased tokens, unstemmed
    words: frozenset[str]
    content: frozenset[str]
    char3: frozenset[str]
    numbers: tuple[str, ...]
    negated: bool
    n_tokens: int
    question_word: str
    question_words: frozenset[str]


def _stem(word: str) -> str:
    # Crude plural/verb-form folding: "studying"/"study", "tips"/"tip". Good enough for overlap.
    for suffix in ("ing", "ies", "es", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


@lru_cache(maxsize=131072)
def text_info(text: str) -> TextInfo:
    toks = tokens(text)
    names = frozenset(w.lower() for w in _WORD.findall(text)[1:] if w[0].isupper())
    words = frozenset(_stem(t) for t in toks)
    content = frozenset(_stem(t) for t in toks if t not in STOPWORDS and not t.endswith("'t"))
    squashed = " " + " ".join(toks) + " "
    char3 = frozenset(squashed[i : i + 3] for i in range(len(squashed) - 2))
    m = marks(text)
    qw = next((t for t in toks if t in QUESTION_WORDS), "")
    return TextInfo(tuple(toks), names, frozenset(toks), words, content, char3, m.numbers,
                    m.negated, len(toks), qw,
                    frozenset(t for t in toks if t in QUESTION_WORDS[:9]))


def _jaccard(x: frozenset[str], y: frozenset[str]) -> float:
    if not x and not y:
        return 1.0
    return len(x & y) / len(x | y)


def scalar_features(q: TextInfo, c: TextInfo, cosine: float) -> list[float]:
    q_only = len(q.content - c.content)
    c_only = len(c.content - q.content)
    q_frac = q_only / max(len(q.content), 1)
    c_frac = c_only / max(len(c.content), 1)
    n_q, n_c = max(q.n_tokens, 1), max(c.n_tokens, 1)
    wh_union = q.question_words | c.question_words
    unmatched = q.content ^ c.content
    diff = q.raw_words ^ c.raw_words
    return [
        cosine,
        _jaccard(q.words, c.words),
        _jaccard(q.content, c.content),
        min(q_frac, c_frac),
        max(q_frac, c_frac),
        min(q_only + c_only, 8) / 8.0,
        _jaccard(q.char3, c.char3),
        float(q.numbers != c.numbers),
        float(q.negated != c.negated),
        float(bool(q.numbers or c.numbers)),
        min(n_q, n_c) / max(n_q, n_c),
        abs(n_q - n_c) / (n_q + n_c),
        float(q.question_word == c.question_word),
        len(q.question_words & c.question_words) / len(wh_union) if wh_union else 1.0,
        # word-level: the character-level ratio costs ~8× more for little extra signal
        SequenceMatcher(None, q.token_seq, c.token_seq, autojunk=False).ratio(),
        min(len(q.names ^ c.names), 4) / 4.0,
        min(max((len(w) for w in unmatched), default=0), 15) / 15.0,
        min(sum(len(w) for w in unmatched), 40) / 40.0,
    ] + [float(w in diff) for w in DIFF_WORDS]


def pair_features(queries: list[TextInfo], candidates: list[TextInfo], q_vecs: np.ndarray,
                  c_vecs: np.ndarray, *, embedding_terms: bool = True) -> np.ndarray:
    """One row per pair: the scalar features, then |q−c| and q⊙c when ``embedding_terms``."""
    q_vecs = np.asarray(q_vecs, dtype=np.float32)
    c_vecs = np.asarray(c_vecs, dtype=np.float32)
    cos = np.einsum("ij,ij->i", q_vecs, c_vecs)
    scalars = np.array([scalar_features(q, c, float(s))
                        for q, c, s in zip(queries, candidates, cos.tolist())],
                       dtype=np.float32).reshape(len(queries), len(SCALAR_FEATURES))
    if not embedding_terms:
        return scalars
    return np.hstack([scalars, np.abs(q_vecs - c_vecs), q_vecs * c_vecs])
