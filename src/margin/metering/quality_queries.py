"""The ledger read behind ``margin quality`` and ``/admin/quality``: per optimisation (and
optionally per route, model or feature of the original requests), what it served and
saved, and what its shadow evaluations found.

Original rows are those with no ``shadow_of``; a shadow row names its original in
``shadow_of`` and carries the optimisation it evaluated. Grouping shadows by the original's
route, model or feature joins each shadow to its original row (on the primary key). The
interval and the estimated quality cost are computed here too, so both readers print the
same numbers."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from margin.metering.db import Database
from margin.quality.wilson import wilson_interval

# ``--by`` -> the original row's column it groups on (with the optimisation)
QUALITY_GROUPS: dict[str, str | None] = {
    "optimization": None, "route": "route", "feature": "feature",
    "model": "COALESCE(o.model, o.requested_model)",
}


@dataclass(frozen=True, slots=True)
class QualityRow:
    optimization: str
    group: str | None          # the route, model or feature (None with by=optimization)
    served: int                # requests this optimisation answered
    saved_usd: float
    share_served: float        # of every request in the window
    shadow_samples: int        # shadows run
    judged: int                # shadows with a verdict (not failed, judge able to judge)
    failed: int                # shadows whose reference call failed
    agreed: int
    agreement: float | None
    agreement_low: float | None
    agreement_high: float | None
    evaluation_usd: float
    # disagreement x share served: the share of all traffic estimated to have got an
    # answer the reference path would not have given
    quality_cost: float | None
    # route:<name> only: share of the route's requests outside its learned router's region
    # (None: not a route, or its router has no region)
    outside_region_share: float | None = None
    # the calibrated threshold in force on the window's newest row (None: not calibrated)
    setting: float | None = None

    def to_json(self, by: str = "optimization") -> dict[str, Any]:
        out = asdict(self)
        group = out.pop("group")
        if by != "optimization":
            out[by] = group
        for k in ("saved_usd", "evaluation_usd"):
            out[k] = round(out[k], 8)
        for k in ("share_served", "agreement", "agreement_low", "agreement_high",
                  "quality_cost", "outside_region_share"):
            if out[k] is not None:
                out[k] = round(out[k], 6)
        return out


def _window(alias: str, since_s: float | None, until_s: float | None) -> tuple[list[str], list]:
    clauses, params = [], []
    if since_s is not None:
        clauses.append(f"{alias}.ts >= ?")
        params.append(since_s)
    if until_s is not None:
        clauses.append(f"{alias}.ts < ?")
        params.append(until_s)
    return clauses, params


def quality_report(db: Database, since_s: float | None = None, until_s: float | None = None,
                   by: str = "optimization") -> list[QualityRow]:
    if by not in QUALITY_GROUPS:
        raise ValueError(f"cannot group quality by {by!r}: one of {', '.join(QUALITY_GROUPS)}")
    col = QUALITY_GROUPS[by]
    o_group = "NULL" if col is None else (col if col.startswith("COALESCE") else f"o.{col}")
    # PostgreSQL refuses a constant in GROUP BY: group on the optimisation alone then
    group_by = "" if col is None else f", {o_group}"

    w, p = _window("o", since_s, until_s)
    where = " AND ".join(["o.shadow_of IS NULL", *w])
    (total,) = db.query(f"SELECT COUNT(*) FROM requests o WHERE {where}", p)[0]
    served = db.query(
        f"SELECT o.optimization, {o_group}, COUNT(*), SUM(COALESCE(o.optimization_saved_usd, 0))"
        f" FROM requests o WHERE {where} AND o.optimization IS NOT NULL"
        f" GROUP BY o.optimization{group_by}", p)

    w, p = _window("s", since_s, until_s)
    s_where = " AND ".join(["s.shadow_of IS NOT NULL", "s.optimization IS NOT NULL", *w])
    measures = ("COUNT(*), SUM(CASE WHEN s.agreement IS NOT NULL THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN s.agreement = 1 THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN s.status <> 200 THEN 1 ELSE 0 END), SUM(s.cost_usd)")
    if col is None:
        shadows = db.query(f"SELECT s.optimization, NULL, {measures} FROM requests s "
                           f"WHERE {s_where} GROUP BY s.optimization", p)
    else:
        shadows = db.query(f"SELECT s.optimization, {o_group}, {measures} FROM requests s "
                           f"LEFT JOIN requests o ON o.id = s.shadow_of WHERE {s_where} "
                           f"GROUP BY s.optimization{group_by}", p)

    keys: dict[tuple[str, Any], dict[str, Any]] = {}
    for opt, group, n, saved in served:
        keys.setdefault((opt, group), {}).update(served=int(n), saved=float(saved or 0))
    for opt, group, n, judged, agreed, failed, cost in shadows:
        keys.setdefault((opt, group), {}).update(
            samples=int(n), judged=int(judged or 0), agreed=int(agreed or 0),
            failed=int(failed or 0), cost=float(cost or 0))
    regions = _outside_region(db, since_s, until_s)
    settings = _settings_in_force(db, since_s, until_s)
    out = []
    for (opt, group), v in sorted(keys.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        judged, agreed = v.get("judged", 0), v.get("agreed", 0)
        interval = wilson_interval(agreed, judged)
        agreement = agreed / judged if judged else None
        share = v.get("served", 0) / total if total else 0.0
        out.append(QualityRow(
            optimization=opt, group=None if group is None else str(group),
            served=v.get("served", 0), saved_usd=v.get("saved", 0.0), share_served=share,
            shadow_samples=v.get("samples", 0), judged=judged, failed=v.get("failed", 0),
            agreed=agreed, agreement=agreement,
            agreement_low=interval[0] if interval else None,
            agreement_high=interval[1] if interval else None,
            evaluation_usd=v.get("cost", 0.0),
            quality_cost=None if agreement is None else (1 - agreement) * share,
            outside_region_share=regions.get(opt.split(":", 1)[1]) if opt.startswith("route:")
            else None,
            setting=settings.get(opt)))
    return out


def _outside_region(db: Database, since_s: float | None, until_s: float | None
                    ) -> dict[str, float]:
    """Per route: the share of its requests whose route note says ``outside_region``,
    among those whose router had a region to say it."""
    if db.dialect == "postgresql":
        flag = "CAST(notes AS json)->'route'->>'outside_region'"
        yes = f"{flag} = 'true'"
    else:
        flag = "json_extract(notes, '$.route.outside_region')"
        yes = f"{flag} = 1"
    w, p = _window("o", since_s, until_s)
    # The pattern is a parameter: a literal % would read as a placeholder on PostgreSQL.
    where = " AND ".join(["o.shadow_of IS NULL", "o.route IS NOT NULL", "o.notes LIKE ?", *w])
    rows = db.query(f"SELECT o.route, COUNT(*), SUM(CASE WHEN {yes} THEN 1 ELSE 0 END) "
                    f"FROM requests o WHERE {where} GROUP BY o.route",
                    ["%outside_region%", *p])
    return {str(r): int(out or 0) / int(n) for r, n, out in rows if n}


def _settings_in_force(db: Database, since_s: float | None, until_s: float | None
                       ) -> dict[str, float]:
    """The calibrated settings (``notes.calibrated``) on the window's newest row."""
    import orjson

    w, p = _window("o", since_s, until_s)
    where = " AND ".join(["o.shadow_of IS NULL", "o.notes LIKE ?", *w])
    found = db.query(f"SELECT o.notes FROM requests o WHERE {where} ORDER BY o.ts DESC "
                     "LIMIT 1", ["%calibrated%", *p])
    if not found:
        return {}
    try:
        calibrated = orjson.loads(found[0][0]).get("calibrated") or {}
        return {str(k): float(v[0]) for k, v in calibrated.items()}
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError, IndexError):
        return {}
