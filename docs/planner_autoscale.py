"""The "across traces" table of docs/planner.md: `margin plan autoscale` (defaults) on the shared
traces and on traces derived from them (a rate scaled down, a cut), side by side.

The derived traces are written to a temporary folder for the run and removed after (never into
the repository). Run from the repository root, with the shared data next to it:
    PYTHONPATH=src python docs/planner_autoscale.py [DATA_DIR]
Prints one JSON line per trace (about 6 minutes on 2 cores).
"""

import gzip
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from margin.plan.options import CapacityOptions
from margin.plan.planner import autoscale_plan, build_context
from margin.plan.traces import load_trace

data = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/traces/")
SG, NASA = data / "servegen_m_large_rate_600s.csv", data / "nasa_1995_requests.csv.gz"
DAY_S = 86_400


def derive(tmp: Path) -> list[tuple[str, Path, float]]:
    sg = SG.read_text().splitlines()
    rows = [r.split(",") for r in sg[1:]]
    tenth, week1 = tmp / "sg_tenth.csv", tmp / "sg_week1.csv"
    tenth.write_text("\n".join([sg[0]] + [f"{t},{float(r) * 0.1}" for t, r in rows]) + "\n")
    week1.write_text("\n".join([sg[0]] + [f"{t},{r}" for t, r in rows
                                          if float(t) < 7 * DAY_S]) + "\n")
    with gzip.open(NASA, "rt") as f:
        lines = f.read().splitlines()
    t0 = int(lines[1].split(",")[0])
    cut = [ln for ln in lines[1:] if int(ln.split(",")[0]) < t0 + 26 * DAY_S]
    nasa26 = tmp / "nasa_first26.csv"
    nasa26.write_text("\n".join([lines[0]] + cut) + "\n")
    return [("ServeGen x 0.1 (derived)", tenth, 7.0),
            ("ServeGen week 1, last 4 days (derived)", week1, 4.0),
            ("NASA first 26 days (derived)", nasa26, 7.0)]


def row(name: str, path: Path, sim_days: float) -> dict:
    opts = replace(CapacityOptions(), sim_days=sim_days)
    plan = autoscale_plan(build_context(load_trace(str(path)), opts), opts)
    res = plan.search
    reach = res.reachable.replica_hours
    pred = res.best_by_family.get("predictive")
    reactive = [r for f, r in res.best_by_family.items()
                if f not in ("predictive", "static") and r.meets_slo]
    best_reactive = min(reactive, key=lambda r: r.replica_hours) if reactive else None
    rec = res.recommended

    def short(r):  # noqa: ANN001, ANN202
        return None if r is None else {
            "policy": r.policy, "label": r.params.get("label"),
            "replica_h": round(r.replica_hours), "x_reachable": round(r.replica_hours / reach, 2),
            "over_slo": round(r.over_slo_share, 4), "hours_over": round(r.hours_over_slo_share, 4),
            "meets": r.meets_slo}
    return {"trace": name, "clairvoyant": round(res.clairvoyant.replica_hours),
            "reachable": round(reach), "predictive": short(pred),
            "best_reactive": short(best_reactive), "static": round(res.static.replica_hours),
            "recommended": short(rec), "saving_vs_static": round(plan.saving_vs_static(), 3)}


with tempfile.TemporaryDirectory() as tmp:
    cases = [("ServeGen (shared)", SG, 7.0), ("NASA (shared)", NASA, 7.0)] + derive(Path(tmp))
    for name, path, days in cases:
        print(json.dumps(row(name, path, days)), flush=True)
