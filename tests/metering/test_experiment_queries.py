"""The experiment query on both ledgers: per arm rows, and shadow agreement when the ledger
has the shadow columns (added here by hand when this branch's schema lacks them)."""

import pytest

from margin.experiments.report import experiment_report
from margin.metering.db import connect
from margin.metering.migrations import migrate


def _insert(db, rows):
    from margin.metering import schema

    for row in rows:
        db.execute(schema.insert_sql(), schema.values(row))
    db.commit()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_per_arm_rows_and_shadow_agreement(backend, tmp_path, request):
    url = str(tmp_path / "l.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    db = connect(url)
    migrate(db)
    rows = []
    for i in range(40):
        arm = "a" if i % 2 else "b"
        rows.append({"id": f"r{i}", "ts": 1000.0 + i, "experiment": "e", "arm": arm,
                     "cost_usd": (0.001 if arm == "a" else 0.002) + i * 1e-6,
                     "latency_ms": 10.0 + i, "status": 500 if i in (3, 5) else 200})
    rows.append({"id": "other", "ts": 1000.0, "experiment": "f", "arm": "a", "status": 200})
    _insert(db, rows)
    report = experiment_report(db, "e", None, ["b", "a"])
    by_arm = {a["arm"]: a for a in report["arms"]}
    assert [a["arm"] for a in report["arms"]] == ["b", "a"]
    assert by_arm["a"]["requests"] == 20 and by_arm["b"]["requests"] == 20
    assert by_arm["a"]["errors"] == 2 and by_arm["b"]["errors"] == 0
    assert report["verdict"][0].startswith("a is cheaper than b per request (significant")
    assert report["shadow"] == "no shadow samples"
    assert experiment_report(db, "e", 1030.0)["arms"][0]["requests"] == 5
    if "agreement" not in db.columns("requests"):
        db.execute("ALTER TABLE requests ADD COLUMN shadow_of TEXT")
        db.execute("ALTER TABLE requests ADD COLUMN agreement INTEGER")
        db.commit()
    for i in range(10):  # shadows of arm a's requests: 7 agree, 2 disagree, 1 failed
        agreement = None if i == 9 else (1 if i < 7 else 0)
        db.execute("INSERT INTO requests (id, ts, endpoint, status, feature, shadow_of, agreement) "
                   "VALUES (?, ?, 'chat', 200, 'evaluation', ?, ?)",
                   (f"s{i}", 2000.0, f"r{2 * i + 1}", agreement))
    db.commit()
    report = experiment_report(db, "e", None, ["b", "a"])
    a = {x["arm"]: x for x in report["arms"]}["a"]
    assert a["shadow_samples"] == 9 and a["agreement"] == pytest.approx(7 / 9)
    assert a["agreement_low"] < 7 / 9 < a["agreement_high"]
    assert report["shadow"] == "samples"
    assert "too few shadow samples" in report["verdict"][0]
    db.close()
