"""Which arm a user (or key) is in: a salted SHA-256, stable across requests, processes
and replicas, and independent between experiments (the experiment's name is the salt)."""

from __future__ import annotations

import hashlib
from typing import Sequence

from margin.experiments.config import ArmConfig


def unit_hash(experiment: str, subject: str) -> float:
    """A number in [0, 1) fixed by (experiment, subject), uniform over subjects."""
    digest = hashlib.sha256(f"{experiment}\x00{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def arm_for(experiment: str, subject: str, arms: Sequence[ArmConfig]) -> ArmConfig:
    """The arm whose cumulative share interval holds the subject's hash."""
    u = unit_hash(experiment, subject)
    edge = 0.0
    for arm in arms:
        edge += arm.share
        if u < edge:
            return arm
    return arms[-1]  # shares summing to 1 - 1e-12 leave a sliver: the last arm
