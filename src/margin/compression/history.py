"""Conversation history trimmed to a token budget.

System (and developer) messages always stay, and so do the last ``keep_last_messages``
messages (with the rest of the turn they belong to); the oldest whole turns — a user message
and the replies and tool calls after it — go first until the conversation fits, so it still
starts with a user message and no tool result loses its call. Nothing is summarised: what was
dropped is reported, and optionally announced to the model in one short system line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from margin.compression.text import SYSTEM_ROLES

MARKER = "[{n} earlier messages of this conversation were omitted to fit the context budget]"


@dataclass(slots=True)
class HistoryResult:
    messages: list[Any]
    dropped_messages: int = 0
    dropped_tokens: int = 0
    dropped_roles: dict[str, int] = field(default_factory=dict)


def _units(messages: list[Mapping[str, Any]], indices: list[int]) -> list[list[int]]:
    """Whole turns: a user message with the replies and tool calls after it. Dropping by
    turns keeps the conversation starting with a user message and every tool result with
    the call it answers."""
    units: list[list[int]] = []
    for i in indices:
        if messages[i].get("role") == "user" or not units:
            units.append([i])
        else:
            units[-1].append(i)
    return units


def trim_history(messages: list[Any], max_tokens: int, keep_last: int,
                 count: Callable[[Any], int], insert_marker: bool = False) -> HistoryResult:
    """The messages, oldest non-system turns dropped until ``count`` sums to ``max_tokens``.

    ``count(message)`` is one message's tokens. The budget may stay exceeded when what is
    left is all protected (system prompts and the latest turns).
    """
    sizes = [count(m) for m in messages]
    total = sum(sizes)
    if total <= max_tokens:
        return HistoryResult(list(messages))
    valid = [isinstance(m, Mapping) for m in messages]
    others = [i for i, m in enumerate(messages)
              if valid[i] and m.get("role") not in SYSTEM_ROLES]
    units = _units(messages, others)
    protected_from = others[-keep_last] if len(others) >= keep_last else 0
    # A unit reaching into the protected tail is protected whole.
    droppable = [u for u in units if u[-1] < protected_from]
    dropped: set[int] = set()
    for unit in droppable:
        if total <= max_tokens:
            break
        dropped.update(unit)
        total -= sum(sizes[i] for i in unit)
    if not dropped:
        return HistoryResult(list(messages))
    result = HistoryResult([m for i, m in enumerate(messages) if i not in dropped])
    result.dropped_messages = len(dropped)
    result.dropped_tokens = sum(sizes[i] for i in dropped)
    for i in sorted(dropped):
        role = str(messages[i].get("role"))
        result.dropped_roles[role] = result.dropped_roles.get(role, 0) + 1
    if insert_marker:
        first_other = next((k for k, m in enumerate(result.messages)
                            if not (isinstance(m, Mapping) and m.get("role") in SYSTEM_ROLES)),
                           len(result.messages))
        result.messages.insert(first_other, {"role": "system",
                                             "content": MARKER.format(n=len(dropped))})
    return result
