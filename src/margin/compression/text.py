"""Whitespace and duplicate-content normalisation.

Whitespace: runs of spaces and tabs inside a line become one space, trailing spaces go, more
than one blank line in a row becomes one, zero-width characters go. Leading indentation and
everything inside fenced code blocks is kept, so code still means what it meant.

Duplicates: a paragraph (blank-line separated; a fenced block counts as one) of at least
``min_chars`` that appears more than once in the conversation is sent once — at its last
place, since the latest turns are the ones history trimming keeps. A paragraph that a system
prompt already holds is dropped from the other messages; system prompts are never changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPACES = re.compile(r"[ \t\f\v\u00a0]{2,}|[\t\f\v\u00a0]")
_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
_INDENT = re.compile(r"^[ \t]*")
FENCE = "```"

SYSTEM_ROLES = ("system", "developer")
DUPLICATE_MARKER = "[same text as later in the conversation]"


def normalise_whitespace(text: str) -> str:
    text = _ZERO_WIDTH.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    out: list[str] = []
    in_fence = False
    blank = False
    for line in text.split("\n"):
        line = line.rstrip()
        if line.lstrip().startswith(FENCE):
            in_fence = not in_fence
            out.append(line)
            blank = False
            continue
        if in_fence:
            out.append(line)
            continue
        if not line:
            if not blank and out:
                out.append("")
            blank = True
            continue
        blank = False
        indent = _INDENT.match(line).group(0)  # type: ignore[union-attr]
        out.append(indent + _SPACES.sub(" ", line[len(indent):]))
    while out and not out[-1]:
        out.pop()
    return "\n".join(out)


def paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks; a fenced code block stays one block."""
    blocks: list[str] = []
    current: list[str] = []
    in_fence = False
    for line in text.split("\n"):
        if line.lstrip().startswith(FENCE):
            in_fence = not in_fence
        if not line.strip() and not in_fence:
            if current:
                blocks.append("\n".join(current))
                current = []
            continue
        current.append(line)
    if current:
        blocks.append("\n".join(current))
    return blocks


def _key(paragraph: str) -> str:
    return " ".join(paragraph.split())


@dataclass(slots=True)
class DedupeResult:
    texts: list[str | None]   # None where the input was not a string (left alone)
    paragraphs_removed: int


def dedupe_texts(texts: list[str | None], roles: list[str], min_chars: int) -> DedupeResult:
    """Drop repeated paragraphs across the conversation's messages (see module docstring)."""
    blocks = [paragraphs(t) if isinstance(t, str) else [] for t in texts]
    pinned = {_key(p) for blocks_i, role in zip(blocks, roles) if role in SYSTEM_ROLES
              for p in blocks_i if len(p) >= min_chars}
    seen: set[str] = set()
    keep = [[True] * len(b) for b in blocks]
    removed = 0
    for i in range(len(blocks) - 1, -1, -1):
        if roles[i] in SYSTEM_ROLES:
            continue
        for j in range(len(blocks[i]) - 1, -1, -1):
            p = blocks[i][j]
            if len(p) < min_chars:
                continue
            key = _key(p)
            if key in pinned or key in seen:
                keep[i][j] = False
                removed += 1
            else:
                seen.add(key)
    out: list[str | None] = []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or all(keep[i]):
            out.append(text)
            continue
        kept = [p for p, k in zip(blocks[i], keep[i]) if k]
        out.append("\n\n".join(kept) if kept else DUPLICATE_MARKER)
    return DedupeResult(out, removed)
