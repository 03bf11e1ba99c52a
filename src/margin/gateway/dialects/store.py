"""Stored responses, for ``GET /v1/responses/{id}`` and ``previous_response_id``.

Kept only when the operator has turned on content storage (``ledger.log_content``): a
stored response holds the conversation's text. In process, bounded by entries (the oldest
go first), scoped to the tenant that made them (a team's key never reads another team's
responses); with several replicas a follow-up must reach the replica that answered the
first turn (sticky sessions), or the client sends the whole conversation in ``input``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

MAX_STORED_RESPONSES = 10_000


@dataclass(slots=True)
class Stored:
    tenant: str
    response: dict[str, Any]
    conversation: list[dict[str, Any]]  # chat messages up to and including the answer


class ResponseStore:
    def __init__(self, max_entries: int = MAX_STORED_RESPONSES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Stored] = OrderedDict()

    def put(self, tenant: str, response: dict[str, Any],
            conversation: list[dict[str, Any]]) -> None:
        self._entries[response["id"]] = Stored(tenant, response, conversation)
        self._entries.move_to_end(response["id"])
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, tenant: str, response_id: str) -> Stored | None:
        found = self._entries.get(response_id)
        return found if found is not None and found.tenant == tenant else None
