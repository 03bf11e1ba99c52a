"""What a judge says about two answers to one request, and the interface every judge has.

``agreement`` None means the judge could not judge (no schema to check, an unreadable
verdict, the embedder missing): ``reason`` says why, and such a shadow never counts as
agreement or disagreement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol


@dataclass(frozen=True, slots=True)
class Verdict:
    agreement: bool | None
    score: float | None = None
    reason: str | None = None
    # what judging cost (an llm judge's call), added to the shadow's own cost
    cost_usd: float = 0.0

    @classmethod
    def not_judged(cls, reason: str, cost_usd: float = 0.0) -> "Verdict":
        return cls(None, None, reason, cost_usd)


class Judge(Protocol):
    """Compares the answer the user got (``candidate``) with the reference path's."""

    name: str

    async def judge(self, body: Mapping[str, Any], candidate: Mapping[str, Any],
                    reference: Mapping[str, Any]) -> Verdict: ...

    def worst_case_usd(self, body: Mapping[str, Any]) -> float:
        """The most one judgement can cost (reserved on the spend cap beforehand)."""
        ...
