"""Transparent per-request features for routing, from an OpenAI chat body or a plain prompt.

Every feature is a small, bounded float with a name an operator can read, so a rules router's
weights mean something ("+1.2 per maths marker") and a learned router can use the same vector
next to the prompt's embedding. Extraction is a handful of precompiled regex scans over the
text: well under a millisecond for ordinary prompts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

# Order matters: it is the column order of the feature vector the learned router stores.
FEATURE_NAMES: tuple[str, ...] = (
    "log_tokens",        # log2(1 + approximate prompt tokens of the whole conversation)
    "log_last_tokens",   # log2(1 + approximate tokens of the latest user message)
    "code",              # code markers: fences, keywords, braces, stack traces (capped at 5)
    "maths",             # digits, operators, equations, LaTeX (capped at 5)
    "word_problem",      # "how many", "how much", "calculate"... (capped at 3)
    "reasoning",         # "step by step", "explain why", "prove", "compare"... (capped at 3)
    "multiple_choice",   # 1 when the prompt lists lettered options (A. B. C. D.)
    "questions",         # number of question marks (capped at 5)
    "turns",             # user turns minus one (capped at 10): a long dialogue needs context
    "log_max_tokens",    # log2(1 + requested max_tokens), 0 when not set
    "tools",             # 1 when tools/functions are offered
    "json_mode",         # 1 when response_format asks for JSON
    "system_prompt",     # 1 when there is a system/developer message
)
N_FEATURES = len(FEATURE_NAMES)

# Roughly four characters per token for English under BPE tokenisers; routing needs the
# order of magnitude, not the exact count, and a tokenizer call would cost more than the rest.
CHARS_PER_TOKEN = 4.0

# Substring counts over the lower-cased text: str.count runs at memory speed, while one
# big case-insensitive alternation regex costs milliseconds on a long prompt.
_CODE_MARKERS = (
    "```", "def ", "();", "){", ") {", "=>", "#include", "console.log", "printf(",
    "public static", "import numpy", "import os", "from typing", "self.", "return;",
    "</", "/>", "!=", "==", "->", "traceback (most recent", "select *", "int main",
)
_MATHS_MARKERS = (
    "\\frac", "\\sqrt", "\\int", "\\sum", "solve", "equation", "integral", "derivative",
    "probability", "polynomial", "matrix", "prime", "remainder", "sqrt", "%", "^",
)
_WORD_PROBLEM_MARKERS = (
    "how many", "how much", "how long", "how far", "how old", "calculate", "compute",
    "what is the total", "what is the sum", "what is the average", "per hour", "per day",
    "per week", "per month", "per year", "percent", "in total", "altogether",
)
_REASONING_MARKERS = (
    "step by step", "step-by-step", "explain why", "explain how", " prove", "proof", "derive",
    "compare", "contrast", "analyze", "analyse", "justify", "evaluate", "reasoning",
    "trade-off", "tradeoff", "pros and cons", "design a", "optimiz", "optimis", "debug",
    "why ", "implication", "critique", "which of the following",
)
# Only tried where a digit or a letter stands before an operator: cheap.
_ARITHMETIC = re.compile(r"\d ?[-+*/×÷=<>] ?\(?-?\d")
_ASSIGNMENT = re.compile(r"\b[a-z] ?= ?-?\d")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_CHOICES = re.compile(r"^\s*\(?[A-D][.)]\s+\S", re.M)


def _text_of(content: Any) -> str:
    """The text of one message's content: a string, or OpenAI's list of typed parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return str(content)


def as_body(request: Mapping[str, Any] | str) -> Mapping[str, Any]:
    """A chat body from a body, a plain prompt string, or a ``{"prompt": ...}`` mapping."""
    if isinstance(request, str):
        return {"messages": [{"role": "user", "content": request}]}
    if "messages" not in request and isinstance(request.get("prompt"), str):
        return {**request, "messages": [{"role": "user", "content": request["prompt"]}]}
    return request


def routing_text(request: Mapping[str, Any] | str) -> str:
    """The text a router judges: the latest user message (what the model must answer now)."""
    body = as_body(request)
    messages = body.get("messages") or []
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role", "user") == "user":
            return _text_of(message.get("content"))
    if messages and isinstance(messages[-1], Mapping):
        return _text_of(messages[-1].get("content"))
    return ""


def _count(text: str, markers: tuple[str, ...]) -> int:
    return sum(text.count(m) for m in markers)


def _capped(count: int, cap: int) -> float:
    return float(min(count, cap))


def extract_features(request: Mapping[str, Any] | str) -> list[float]:
    """The feature vector (in ``FEATURE_NAMES`` order) of one request."""
    body = as_body(request)
    messages = [m for m in (body.get("messages") or []) if isinstance(m, Mapping)]
    texts = [_text_of(m.get("content")) for m in messages]
    roles = [str(m.get("role", "user")) for m in messages]
    last = routing_text(body)
    all_chars = sum(len(t) for t in texts)

    user_turns = sum(1 for r in roles if r == "user")
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    try:
        max_tokens_f = max(0.0, float(max_tokens))
    except (TypeError, ValueError):
        max_tokens_f = 0.0
    response_format = body.get("response_format")
    json_mode = isinstance(response_format, Mapping) and str(
        response_format.get("type", "")).startswith("json")

    low = last.lower()
    maths = _count(low, _MATHS_MARKERS) + len(_ARITHMETIC.findall(low))
    if "=" in low:
        maths += len(_ASSIGNMENT.findall(low))
    # Many numbers in one message is a word problem's signature even without operators.
    if len(_NUMBER.findall(last)) >= 3:
        maths += 1
    return [
        math.log2(1.0 + all_chars / CHARS_PER_TOKEN),
        math.log2(1.0 + len(last) / CHARS_PER_TOKEN),
        _capped(_count(low, _CODE_MARKERS), 5),
        _capped(maths, 5),
        _capped(_count(low, _WORD_PROBLEM_MARKERS), 3),
        _capped(_count(low, _REASONING_MARKERS), 3),
        1.0 if len(_CHOICES.findall(last)) >= 2 else 0.0,
        _capped(last.count("?"), 5),
        _capped(max(0, user_turns - 1), 10),
        math.log2(1.0 + max_tokens_f),
        1.0 if body.get("tools") or body.get("functions") else 0.0,
        1.0 if json_mode else 0.0,
        1.0 if any(r in ("system", "developer") for r in roles) else 0.0,
    ]


def features_dict(request: Mapping[str, Any] | str) -> dict[str, float]:
    """The same features keyed by name (for explanations and logs)."""
    return dict(zip(FEATURE_NAMES, extract_features(request)))
