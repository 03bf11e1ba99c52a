"""The one query the experiment report reads (CLI and ``/admin/experiments``): per arm, the
cost, latency and status of each request, and the shadow evaluations of its requests when
the ledger has shadow columns (``shadow_of``, ``agreement``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from margin.metering.db import Database


@dataclass
class ArmRows:
    arm: str
    cost_usd: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    errors: int = 0
    agreements: int = 0   # shadow samples that agreed with the arm's answer
    shadow_samples: int = 0  # shadow samples with a verdict (failed shadows excluded)

    @property
    def requests(self) -> int:
        return len(self.cost_usd)


@dataclass
class ExperimentRows:
    experiment: str
    arms: dict[str, ArmRows]
    shadow_columns: bool  # False: this ledger has no shadow evaluation columns


def experiment_rows(db: Database, experiment: str, since_ts: float | None = None
                    ) -> ExperimentRows:
    where, params = "experiment = ?", [experiment]
    if since_ts is not None:
        where += " AND ts >= ?"
        params.append(since_ts)
    arms: dict[str, ArmRows] = {}
    for arm, cost, latency, status in db.query(
            f"SELECT arm, cost_usd, latency_ms, status FROM requests WHERE {where} "
            "ORDER BY ts", tuple(params)):
        rows = arms.setdefault(arm or "", ArmRows(arm or ""))
        rows.cost_usd.append(float(cost or 0.0))
        if latency is not None:
            rows.latency_ms.append(float(latency))
        if status is None or int(status) >= 400:
            rows.errors += 1
    columns = db.columns("requests")
    shadow = "shadow_of" in columns and "agreement" in columns
    if shadow:
        on = where.replace("experiment", "o.experiment").replace("ts >=", "o.ts >=")
        for arm, agreed, n in db.query(
                "SELECT o.arm, SUM(s.agreement), COUNT(s.agreement) FROM requests s "
                f"JOIN requests o ON s.shadow_of = o.id WHERE {on} GROUP BY o.arm",
                tuple(params)):
            rows = arms.setdefault(arm or "", ArmRows(arm or ""))
            rows.agreements, rows.shadow_samples = int(agreed or 0), int(n or 0)
    return ExperimentRows(experiment, arms, shadow)
