"""Token counts before the upstream reports them: a typical estimate (usage the upstream did
not report, marked as estimated; compression) and a bound (what a reservation assumes).

The bound (``prompt_token_bound``) counts everything a provider bills as prompt: message
text and every content part, names, tool calls and tool results in the history, tool and
function definitions, ``response_format`` / JSON schemas, images and audio
(``margin.metering.media``). It is built to be at least what a byte-level BPE tokenizer
counts for English, code and JSON; the admission stage still scales it by a correction
learned from what providers report (``margin.limits.correction``).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import orjson

from margin.metering.media import audio_tokens, data_url_image_size, image_tokens

# BPE tokenizers average about four characters of English per token; words and
# punctuation give a floor that holds better for code and short strings.
_PIECES = re.compile(r"\w+|[^\w\s]")


def estimate_tokens(text: str) -> int:
    if not text:
        return 0
    return max(len(_PIECES.findall(text)), round(len(text) / 4))


def message_text(messages: list[dict[str, Any]]) -> str:
    parts: list[str] = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return "\n".join(parts)


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens of a chat or completions body; 4 tokens of framing per chat message."""
    if "messages" in body:
        msgs = body.get("messages") or []
        return estimate_tokens(message_text(msgs)) + 4 * len(msgs) + 3
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        if prompt and all(isinstance(p, int) for p in prompt):  # one prompt as token ids
            return len(prompt)
        return sum(estimate_tokens(p) if isinstance(p, str) else len(p) for p in prompt)
    return estimate_tokens(prompt if isinstance(prompt, str) else str(prompt))


# The bound: a run of ASCII letters counts one token per 3.5 letters when lower case, per
# 2.5 when capitalised or mixed (names, identifiers), per 1.5 in capitals (acronyms), at
# least one; a run of ASCII punctuation (JSON's ``":{"``) one per 2 characters; digits and
# every other non-space character (CJK, accents) one token each, a character of 4 UTF-8
# bytes (emoji) four; a newline, or a space before a digit (BPE keeps both apart), one; runs
# of spaces or newlines one token per 4. Against SmolLM2's byte-level BPE on 9,000 questions and
# documents from ../shared/data, the bound was below the real count for 5 % of texts, by
# 10 % at most (median: the real count is 0.64 x the bound); the learned correction
# (``margin.limits.correction``) covers what remains.
_BOUND_PIECES = re.compile(r"[A-Za-z]+|\s{2,}|\n| (?=\d)|[!-/:-@\[-`{-~]+|[^\sA-Za-z]")
# Per message: role and separators, as OpenAI's chat format bills them, with room to spare.
MESSAGE_FRAMING_TOKENS = 6
REPLY_PRIMING_TOKENS = 3
# Keys of a chat body that are settings, never billed as prompt.
_NOT_BILLED = frozenset({
    "model", "stream", "stream_options", "temperature", "top_p", "n", "max_tokens",
    "max_completion_tokens", "max_output_tokens", "stop", "presence_penalty",
    "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "user", "seed",
    "parallel_tool_calls", "store", "metadata", "service_tier", "reasoning_effort",
    "reasoning", "modalities", "prediction", "timeout", "echo", "best_of", "suffix",
    "messages", "prompt", "input", "encoding_format", "dimensions", "truncation",
    "previous_response_id", "background", "include", "top_k"})


def text_token_bound(text: str) -> int:
    """An upper bound on the BPE tokens of ``text`` (see ``_BOUND_PIECES``)."""
    if not text:
        return 0
    if len(text) >= 256:  # tool lists and schemas repeat request after request
        return _long_text_bound(text)
    return _text_bound(text)


@functools.lru_cache(maxsize=2048)
def _long_text_bound(text: str) -> int:
    return _text_bound(text)


def _text_bound(text: str) -> int:
    n = 0
    for piece in _BOUND_PIECES.findall(text):
        c = piece[0]
        if c.isspace():
            n += math.ceil(len(piece) / 4)  # also 1 for a lone newline or digit's space
        elif c.isascii() and c.isalpha():
            if len(piece) > 1 and piece.isupper():
                per = 1.5
            elif not piece.islower():
                per = 2.5
            else:
                per = 3.5
            n += max(1, math.ceil(len(piece) / per))
        elif c.isascii() and not c.isdigit():
            n += math.ceil(len(piece) / 2)
        else:
            n += len(piece.encode()) if not c.isascii() and len(piece.encode()) > 3 else 1
    return n


def _json_bound(value: Any) -> int:
    if isinstance(value, str):
        return text_token_bound(value)
    try:
        return text_token_bound(orjson.dumps(value).decode())
    except TypeError:
        return text_token_bound(str(value))


def _part_bound(part: Any) -> int:
    """One content part: text, an image, audio, a file, or anything else a provider adds."""
    if isinstance(part, str):
        return text_token_bound(part)
    if not isinstance(part, dict):
        return _json_bound(part)
    kind = part.get("type")
    if kind in ("text", "input_text", "output_text", "refusal"):
        return text_token_bound(str(part.get("text") or part.get("refusal") or ""))
    if kind in ("image_url", "input_image", "image"):
        spec = part.get("image_url", part)
        url = spec.get("url") if isinstance(spec, dict) else spec
        detail = (spec.get("detail") if isinstance(spec, dict) else None) or part.get("detail")
        size = data_url_image_size(url) if isinstance(url, str) else None
        return image_tokens(*(size or (None, None)), detail or "auto") + 2
    if kind in ("input_audio", "audio"):
        audio = part.get("input_audio") or part.get("audio") or part
        data = audio.get("data") if isinstance(audio, dict) else None
        return audio_tokens(data) if isinstance(data, str) else _json_bound(part)
    if kind in ("file", "input_file"):
        # A document's tokens depend on its pages; only its text form is countable here.
        f = part.get("file", part)
        data = f.get("file_data") if isinstance(f, dict) else None
        return (len(data) * 3 // 4 if isinstance(data, str) else 0) + _json_bound(
            {k: v for k, v in (f.items() if isinstance(f, dict) else []) if k != "file_data"})
    return _json_bound(part)


def _content_bound(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, list):
        return sum(_part_bound(p) for p in content)
    return _part_bound(content)


def _message_bound(m: Any) -> int:
    if not isinstance(m, dict):
        return MESSAGE_FRAMING_TOKENS + _json_bound(m)
    n = MESSAGE_FRAMING_TOKENS + _content_bound(m.get("content"))
    for key, value in m.items():
        if key in ("content", "role"):
            continue
        # name, tool_calls (with their JSON arguments), tool_call_id, function_call, audio
        n += _json_bound(value) + 1
    return n


def prompt_token_bound(body: dict[str, Any]) -> int:
    """An upper bound on the prompt tokens a provider bills for a chat, completions or
    responses body (see the module docstring)."""
    n = 0
    if "messages" in body:
        msgs = body.get("messages") or []
        n += sum(_message_bound(m) for m in msgs) + REPLY_PRIMING_TOKENS
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if prompt and all(isinstance(p, int) for p in prompt):
            n += len(prompt)
        else:
            n += sum(text_token_bound(p) if isinstance(p, str) else len(p) for p in prompt)
    elif prompt is not None:
        n += text_token_bound(str(prompt))
    inp = body.get("input")  # /v1/responses: a string or a list of items
    if isinstance(inp, str):
        n += text_token_bound(inp) + MESSAGE_FRAMING_TOKENS
    elif isinstance(inp, list):
        n += sum(_message_bound(m) if isinstance(m, dict) and "content" in m
                 else _part_bound(m) for m in inp)
    # tools, functions, tool_choice, response_format, instructions, system, text.format …
    for key, value in body.items():
        if key not in _NOT_BILLED and value is not None:
            n += _json_bound(value)
    return n
