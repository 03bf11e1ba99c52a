"""What may attribute a request (a user, a feature, a team, a metadata value): bounded,
printable text. It lands in every ledger row and in rate-limit and budget keys, so a 1 MB
header or a value full of control characters is refused, never stored."""

from __future__ import annotations

from margin.errors import BadRequest

MAX_ATTRIBUTION_CHARS = 256
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
# C0 controls, DEL and C1 controls; tab included (it has no place in a name).
_CONTROL = frozenset(range(0x00, 0x20)) | frozenset(range(0x7F, 0xA0))


def attribution(name: str, value: str, limit: int = MAX_ATTRIBUTION_CHARS) -> str:
    """``value`` if it is fit to attribute a request by (a ledger column, a limit's key),
    else a 400 naming ``name``."""
    if len(value) > limit:
        raise BadRequest(f"'{name}' may be at most {limit} characters, got {len(value)}",
                         code="invalid_value")
    if not value.isprintable() and any(ord(c) in _CONTROL for c in value):
        raise BadRequest(f"'{name}' must not contain control characters",
                         code="invalid_value")
    return value
