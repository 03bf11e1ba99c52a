"""Per-second latency of a replayed trace: fluid backlog plus the Erlang C tail, vectorised.

For the requests arriving in second t, with R ready replicas (c = R x concurrency servers),
backlog B carried in from earlier seconds and a smoothed arrival rate λ:

* the backlog ahead of them takes ``B / (R x replica_rps)`` seconds to drain (fluid wait);
* on top, queueing at utilisation λ/(R x replica_rps) waits longer than x with probability
  ``C(c, a) exp(-(c - a)/s · x · 2/(ca² + cs²))`` (see :mod:`margin.plan.capacity`).

A request is over the SLO when fluid wait + queueing wait + service time exceeds it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaincc, gammaln

_RHO_MAX = 0.999


def erlang_c_vec(servers: np.ndarray, load: np.ndarray) -> np.ndarray:
    """Erlang C for arrays of (servers, offered load), in O(1) each.

    Erlang B is the Poisson(a) probability of c over its CDF up to c (the truncated-Poisson form
    of M/M/c/c), evaluated with the log-gamma and incomplete-gamma functions for any c; C follows from B.
    """
    servers = np.asarray(servers, dtype=float)
    load = np.asarray(load, dtype=float)
    out = np.zeros(np.broadcast(servers, load).shape)
    ok = (servers > 0) & (load > 0)
    if not ok.any():
        return out
    c = np.broadcast_to(servers, out.shape)[ok]
    a = np.broadcast_to(load, out.shape)[ok]
    with np.errstate(divide="ignore", invalid="ignore", under="ignore", over="ignore"):
        # P(X = c) / P(X <= c) for X ~ Poisson(a); P(X <= c) is the regularised Q(c + 1, a).
        b = np.exp(c * np.log(a) - a - gammaln(c + 1)) / gammaincc(c + 1, a)
        rho = np.minimum(a / c, _RHO_MAX)
        cc = b / (1 - rho * (1 - b))
    out[ok] = np.where(a >= c, 1.0, np.clip(np.nan_to_num(cc, nan=1.0), 0.0, 1.0))
    return out


def per_second_latency(ready: np.ndarray, backlog_in: np.ndarray, lam: np.ndarray,
                       concurrency: int, replica_rps: float, slo_s: float, quantile: float,
                       ca2: float, cs2: float) -> tuple[np.ndarray, np.ndarray]:
    """(probability over the SLO, P-quantile latency in seconds) for each second."""
    service_s = concurrency / replica_rps
    cap = ready * replica_rps
    servers = ready * concurrency
    with np.errstate(divide="ignore", invalid="ignore"):
        fluid = np.where(cap > 0, backlog_in / cap, np.inf)
        load = np.minimum(lam * service_s, servers * _RHO_MAX)
    c = erlang_c_vec(servers, load)
    decay = np.where(servers > 0, (servers - load) / service_s * 2 / max(ca2 + cs2, 1e-9), 0.0)
    budget = slo_s - service_s - fluid
    with np.errstate(over="ignore", invalid="ignore"):
        p_over = np.where(budget < 0, 1.0, c * np.exp(-decay * np.maximum(budget, 0)))
        tail = 1 - quantile
        wq = np.where(c > tail, np.log(np.maximum(c, 1e-300) / tail) / np.maximum(decay, 1e-12), 0)
    p_over = np.where(servers > 0, p_over, 1.0)
    latency_q = service_s + fluid + wq
    return np.clip(p_over, 0.0, 1.0), latency_q


def latency_quantile_scalar(ready: float, backlog_in: float, lam: float, concurrency: int,
                            replica_rps: float, quantile: float, ca2: float, cs2: float) -> float:
    """The same latency quantile for one state, in plain floats (policies read it every sync)."""
    if ready <= 0:
        return math.inf
    service_s = concurrency / replica_rps
    servers = ready * concurrency
    load = min(lam * service_s, servers * _RHO_MAX)
    wq = 0.0
    if load > 0:
        c = float(erlang_c_vec(np.array([servers]), np.array([load]))[0]) if servers > 170 else \
            _erlang_c_small(servers, load)
        tail = 1 - quantile
        if c > tail:
            decay = (servers - load) / service_s * 2 / max(ca2 + cs2, 1e-9)
            wq = math.log(c / tail) / max(decay, 1e-12)
    return service_s + backlog_in / (ready * replica_rps) + wq


def _erlang_c_small(servers: float, load: float) -> float:
    # Erlang B by its recursion over whole servers, then the fractional part linearly.
    whole = int(servers)
    b = 1.0
    for k in range(1, whole + 1):
        b = load * b / (k + load * b)
    rho = min(load / servers, _RHO_MAX)
    return b / (1 - rho * (1 - b))


def bucket_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Each element replaced by the mean of its ``window``-long bucket (the last one may be short).

    The queueing term sees the minute's mean rate: second-to-second noise is what ca² is for.
    """
    if window <= 1:
        return x.astype(float)
    n = len(x)
    m = -(-n // window) * window
    pad = np.zeros(m)
    pad[:n] = x
    counts = np.full(m // window, float(window))
    if m > n:
        counts[-1] = window - (m - n)
    means = pad.reshape(-1, window).sum(axis=1) / counts
    return np.repeat(means, window)[:n]
