"""Erlang C against known values and an independent formula; sizing; the rule of thumb; price mix."""

from __future__ import annotations

import math

import numpy as np
import pytest

from margin.plan.autoscale.latency import erlang_c_vec
from margin.plan.capacity import (Prices, ReplicaModel, SloTarget, cheapest_mix, erlang_c,
                                  latency_exceed_prob, mean_wait_s, replicas_for_slo, rule_of_thumb)


def erlang_c_textbook(c: int, a: float) -> float:
    """The closed form with factorials, independent of the recursion under test."""
    top = a ** c / math.factorial(c) * c / (c - a)
    return top / (sum(a ** k / math.factorial(k) for k in range(c)) + top)


def test_known_values() -> None:
    assert erlang_c(3, 2.0) == pytest.approx(4 / 9)            # textbook example
    assert erlang_c(1, 0.7) == pytest.approx(0.7)              # M/M/1: P(wait) = rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(10, 12.0) == 1.0                           # overloaded: everyone waits
    assert erlang_c(5, 0.0) == 0.0


@pytest.mark.parametrize("c,a", [(2, 1.5), (5, 3.2), (10, 8.0), (20, 17.5), (40, 30.0)])
def test_matches_textbook_formula(c: int, a: float) -> None:
    assert erlang_c(c, a) == pytest.approx(erlang_c_textbook(c, a), rel=1e-9)
    assert erlang_c_vec(np.array([c]), np.array([a]))[0] == pytest.approx(
        erlang_c_textbook(c, a), rel=1e-6)


def test_vectorised_form_holds_for_large_pools() -> None:
    # 1000 servers: the recursion and the incomplete-gamma form agree.
    assert erlang_c_vec(np.array([1000]), np.array([950.0]))[0] == pytest.approx(
        erlang_c(1000, 950.0), rel=1e-6)


def test_mm1_mean_wait() -> None:
    # M/M/1, lambda = 0.5/s, mu = 1/s: Wq = rho / (mu - lambda) = 1 s.
    assert mean_wait_s(1, 0.5, 1.0) == pytest.approx(1.0)
    # Allen-Cunneen: deterministic service (cs2 = 0) halves the Poisson wait.
    assert mean_wait_s(1, 0.5, 1.0, ca2=1.0, cs2=0.0) == pytest.approx(0.5)


def test_replicas_for_slo_grows_with_load_and_burstiness() -> None:
    model = ReplicaModel(replica_rps=10, concurrency=2)       # 200 ms per request
    slo = SloTarget(latency_s=0.5, quantile=0.95, utilisation_cap=0.85)
    r = [replicas_for_slo(lam, model, slo) for lam in (1, 10, 50, 100)]
    assert r == sorted(r) and r[0] >= 1
    assert r[-1] >= math.ceil(100 / (10 * 0.85))               # the utilisation cap binds
    bursty = replicas_for_slo(50, model, slo, ca2=12.0)
    assert bursty > replicas_for_slo(50, model, slo)
    chosen = r[2]
    assert latency_exceed_prob(chosen, 50, model, slo) <= 0.05
    assert latency_exceed_prob(chosen - 1, 50, model, slo) > 0.05 or \
        50 / ((chosen - 1) * 10) > 0.85


def test_slo_below_service_time_is_refused() -> None:
    with pytest.raises(ValueError, match="not above the service time"):
        replicas_for_slo(5, ReplicaModel(2, 4), SloTarget(latency_s=1.0))


def test_rule_of_thumb() -> None:
    # avg 45 rps, P99 130 rps, 10 rps per replica: min max(2, ceil(5.4)) = 6, max ceil(15.6) = 16
    assert rule_of_thumb(45, 130, 10) == (6, 16)
    assert rule_of_thumb(1, 2, 10) == (2, 2)


def test_cheapest_mix_hand_worked() -> None:
    # 10 hours: 2 replicas for 8 hours, 6 for 2 hours. Reserved $0.6, on demand $1, spot $0.35
    # for at most 50 % of what runs.
    demand = np.array([2] * 8 + [6] * 2, dtype=float)
    prices = Prices(on_demand_usd_per_h=1.0, reserved_usd_per_h=0.6, spot_usd_per_h=0.35,
                    spot_max_share=0.5)
    mix = cheapest_mix(demand, 1.0, prices)
    # B=0: 8h x (1 spot + 1 od) + 2h x (3 spot + 3 od)            = 10.8 + 8.1 = 18.9
    # B=1: 10 x 0.6 + 8h x 1 spot + 2h x (3 spot + 2 od)            = 6 + 2.8 + 6.1 = 14.9
    # B=2: 10 x 1.2 + 2h x (3 spot + 1 od)                          = 12 + 4.1 = 16.1
    assert mix.reserved == 1
    assert mix.cost_usd == pytest.approx(14.9)
    assert mix.spot_replica_h == pytest.approx(8 + 6)
    assert mix.all_on_demand_usd == pytest.approx(28.0)
