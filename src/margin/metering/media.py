"""What images and audio in a prompt are billed as, in tokens.

Images follow OpenAI's published rule for its vision models: ``detail: low`` is a flat 85
tokens; otherwise the image is fitted inside 2048 x 2048, scaled down so its shorter side
is at most 768, cut into 512-pixel tiles, and billed 85 + 170 per tile. When the size is
unknown (a URL the gateway does not fetch), the rule's maximum is the bound: 8 tiles, 1445
tokens. Dimensions are read from the header of a ``data:`` URL (PNG, GIF, JPEG, WebP).

Audio is bounded by its size: providers bill about 10 tokens per second of audio, and no
common encoding carries a second in fewer than 1,000 bytes (8 kbit/s), so 1 token per 100
bytes of decoded audio never undercounts.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct

LOW_DETAIL_TOKENS = 85
TILE_TOKENS = 170
MAX_IMAGE_TOKENS = LOW_DETAIL_TOKENS + TILE_TOKENS * 8
AUDIO_BYTES_PER_TOKEN = 100


def image_tokens(width: int | None, height: int | None, detail: str | None = "auto") -> int:
    """Tokens an image is billed as; the rule's maximum when its size is unknown."""
    if detail == "low":
        return LOW_DETAIL_TOKENS
    if not width or not height or width <= 0 or height <= 0:
        return MAX_IMAGE_TOKENS
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        s = 2048 / max(w, h)
        w, h = w * s, h * s
    if min(w, h) > 768:
        s = 768 / min(w, h)
        w, h = w * s, h * s
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return LOW_DETAIL_TOKENS + TILE_TOKENS * tiles


def _b64_head(data: str, n_bytes: int) -> bytes:
    # Decoding only the start: a header needs a few dozen bytes, a photo is megabytes.
    chunk = data[: (n_bytes // 3 + 1) * 4]
    try:
        return base64.b64decode(chunk + "=" * (-len(chunk) % 4))
    except (binascii.Error, ValueError):
        return b""


def image_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from the first bytes of a PNG, GIF, JPEG or WebP file."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        w, h = struct.unpack(">II", head[16:24])
        return w, h
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        w, h = struct.unpack("<HH", head[6:10])
        return w, h
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        kind = head[12:16]
        if kind == b"VP8X":
            w = int.from_bytes(head[24:27], "little") + 1
            h = int.from_bytes(head[27:30], "little") + 1
            return w, h
        if kind == b"VP8 " and len(head) >= 30:
            w, h = struct.unpack("<HH", head[26:30])
            return w & 0x3FFF, h & 0x3FFF
        if kind == b"VP8L" and len(head) >= 25:
            b = head[21:25]
            w = 1 + (((b[1] & 0x3F) << 8) | b[0])
            h = 1 + (((b[3] & 0x0F) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
            return w, h
        return None
    if head[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                return None
            marker = head[i + 1]
            length = int.from_bytes(head[i + 2:i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", head[i + 5:i + 9])
                return w, h
            i += 2 + length
    return None


def data_url_image_size(url: str) -> tuple[int, int] | None:
    """The size of an image given inline as ``data:image/...;base64,...``, else None."""
    if not url.startswith("data:"):
        return None
    meta, sep, data = url.partition(",")
    if not sep or not meta.endswith(";base64"):
        return None
    # JPEG puts its size after the metadata segments (EXIF can be tens of kB).
    head = _b64_head(data, 64 * 1024 if "jpeg" in meta or "jpg" in meta else 64)
    return image_size(head)


def audio_tokens(b64_data: str) -> int:
    """An upper bound on the tokens of base64 audio (see the module docstring)."""
    decoded = len(b64_data) * 3 // 4
    return decoded // AUDIO_BYTES_PER_TOKEN + 1
