"""Request ids: a random per-process prefix and a counter. As unique as uuid4 across
replicas, without a getrandom() system call on every request. Shared by the proxy and the
shadow runner (whose rows need ids of their own)."""

from __future__ import annotations

import itertools
import os

_ID_PREFIX = os.urandom(10).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFF:012x}"
