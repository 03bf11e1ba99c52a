"""``quality_report`` on SQLite and PostgreSQL: originals and shadows counted apart, grouped
by optimisation or by the originals' route, model and feature, within the window."""

from __future__ import annotations

import uuid

import pytest

from margin.config import LedgerConfig
from margin.metering.db import connect
from margin.metering.ledger import LedgerWriter
from margin.metering.quality_queries import quality_report
from margin.quality.wilson import wilson_interval

T0 = 1_750_000_000.0


def _ledger() -> list[dict]:
    rows: list[dict] = []

    def add(opt, model, feature, shadows, saved=0.001, ts=T0, route="auto"):
        oid = uuid.uuid4().hex
        rows.append({"id": oid, "ts": ts, "endpoint": "chat", "model": model,
                     "feature": feature, "status": 200, "route": route, "cost_usd": 0.0001,
                     "optimization": opt, "optimization_saved_usd": saved})
        for i, (status, agreement) in enumerate(shadows):
            rows.append({"id": uuid.uuid4().hex, "ts": ts + 1 + i, "endpoint": "chat",
                         "model": "large", "feature": "evaluation", "status": status,
                         "route": route, "cost_usd": 0.002, "optimization": opt,
                         "shadow_of": oid, "judge": "exact", "agreement": agreement,
                         "judge_score": None if agreement is None else float(agreement)})

    for i in range(10):  # route:auto on small for two features: 7 of 9 judged agree, 1 failed
        agreement = None if i == 9 else int(i < 7)
        add("route:auto", "small", "chat" if i % 2 else "search",
            [(502 if i == 9 else 200, agreement)])
    for _ in range(4):
        add("semantic_cache", "small", "chat", [], saved=0.01, route=None)
    add("semantic_cache", "small", "chat", [(200, 1)], saved=0.01, route=None)
    for _ in range(5):  # plain requests: in the share's denominator only
        rows.append({"id": uuid.uuid4().hex, "ts": T0, "endpoint": "chat", "model": "large",
                     "status": 200})
    add("route:auto", "small", "chat", [(200, 0)], ts=T0 - 86400)  # outside the window
    return rows


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    url = str(tmp_path / "l.db") if request.param == "sqlite" else \
        request.getfixturevalue("pg_url")
    w = LedgerWriter(LedgerConfig(url=url))
    w.start()
    for row in _ledger():
        w.submit(row)
    w.close()
    handle = connect(url)
    yield handle
    handle.close()


def test_by_optimization(db):
    route, semantic = quality_report(db, since_s=T0 - 10)
    assert route.optimization == "route:auto" and semantic.optimization == "semantic_cache"
    assert (route.served, route.shadow_samples, route.judged, route.failed, route.agreed) == \
        (10, 10, 9, 1, 7)
    assert route.agreement == pytest.approx(7 / 9)
    assert (route.agreement_low, route.agreement_high) == pytest.approx(wilson_interval(7, 9))
    assert route.saved_usd == pytest.approx(0.01) and route.evaluation_usd == pytest.approx(0.02)
    assert route.share_served == pytest.approx(10 / 20)
    assert route.quality_cost == pytest.approx((2 / 9) * 0.5)
    assert (semantic.served, semantic.shadow_samples, semantic.agreement) == (5, 1, 1.0)
    assert semantic.saved_usd == pytest.approx(0.05)
    # the whole ledger: the day-old row and its disagreeing shadow come in
    route_all = quality_report(db)[0]
    assert (route_all.served, route_all.shadow_samples, route_all.agreed) == (11, 11, 7)


def test_by_the_originals_feature_and_model(db):
    by_feature = {(r.optimization, r.group): r for r in quality_report(db, T0 - 10, by="feature")}
    assert set(by_feature) == {("route:auto", "chat"), ("route:auto", "search"),
                               ("semantic_cache", "chat")}
    chat, search = by_feature[("route:auto", "chat")], by_feature[("route:auto", "search")]
    assert (chat.served, chat.shadow_samples) == (5, 5) and (search.served,
                                                             search.shadow_samples) == (5, 5)
    assert chat.agreed + search.agreed == 7
    # shadows are grouped by their original's model (small), not their own (large)
    by_model = quality_report(db, T0 - 10, by="model")
    assert {(r.optimization, r.group) for r in by_model} == {("route:auto", "small"),
                                                            ("semantic_cache", "small")}
    assert quality_report(db, T0 - 10, by="route")[0].to_json("route")["route"] == "auto"


def test_json_shape_has_the_documented_fields(db):
    out = [r.to_json() for r in quality_report(db, T0 - 10)]
    for key in ("optimization", "served", "saved_usd", "shadow_samples", "agreement",
                "agreement_low", "agreement_high", "evaluation_usd", "quality_cost"):
        assert key in out[0]


def test_unknown_grouping_is_refused(db):
    with pytest.raises(ValueError):
        quality_report(db, by="colour")


def test_out_of_region_share_per_route_and_the_calibrated_setting(tmp_path, request):
    """A route's requests flagged outside its router's region, and the threshold the
    newest row was served at, both read from the rows' notes."""
    import orjson

    for kind in ("sqlite", "postgresql"):
        url = str(tmp_path / "r.db") if kind == "sqlite" else request.getfixturevalue("pg_url")
        w = LedgerWriter(LedgerConfig(url=url))
        w.start()
        for i in range(8):  # 8 routed requests: 2 outside the region (sent to the top tier)
            outside = i < 2
            notes = {"route": {"name": "auto", "outside_region": outside,
                               "region_similarity": 0.2 if outside else 0.7},
                     "calibrated": {"route:auto": [0.5 - 0.01 * i, i]}}
            w.submit({"id": uuid.uuid4().hex, "ts": T0 + i, "endpoint": "chat", "status": 200,
                      "route": "auto", "model": "large" if outside else "small",
                      "optimization": None if outside else "route:auto",
                      "optimization_saved_usd": None if outside else 0.001,
                      "notes": orjson.dumps(notes).decode()})
        w.close()
        db = connect(url)
        try:
            (row,) = [r for r in quality_report(db, T0 - 10) if r.optimization == "route:auto"]
        finally:
            db.close()
        assert row.served == 6
        assert row.outside_region_share == pytest.approx(2 / 8), kind
        assert row.setting == pytest.approx(0.43), kind  # the newest row's (i = 7)
        assert row.to_json()["outside_region_share"] == 0.25
