"""Hashed word n-grams: a vocabulary-free bag of words the router can store as one vector.

Unigrams and bigrams of the lower-cased text are hashed (CRC-32, stable across processes and
machines, unlike ``hash``) into ``dim`` buckets; a request's vector is the binary indicator of
its buckets scaled to unit length, so its contribution to a logit is
``sum(weights[buckets]) / sqrt(len(buckets))``.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

_TOKEN = re.compile(r"[a-z]+|\d+|[^\sa-z\d]")


def ngram_buckets(text: str, dim: int) -> np.ndarray:
    """Sorted unique bucket indices of the text's hashed unigrams and bigrams."""
    tokens = _TOKEN.findall(text.lower())
    grams = tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]
    if not grams:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.fromiter((zlib.crc32(g.encode()) % dim for g in grams),
                                 dtype=np.int64, count=len(grams)))


def ngram_logit(weights: np.ndarray, buckets: np.ndarray) -> float:
    if len(buckets) == 0:
        return 0.0
    return float(weights[buckets].sum() / np.sqrt(len(buckets)))
