"""Grouping by coded key columns gives the groups and sums a dict of tuples gives."""

from __future__ import annotations

import random

import numpy as np
import pytest

from margin.metering import rollup_keys


def _by_dict(rows: list[tuple], m: np.ndarray) -> dict[tuple, np.ndarray]:
    out: dict[tuple, np.ndarray] = {}
    for k, x in zip(rows, m):
        out[k] = out.get(k, 0) + x
    return out


@pytest.mark.parametrize("max_keys", [rollup_keys._MAX_KEYS, 50])   # 50: the tuple path
def test_groups_and_sums_equal_a_dict_of_tuples(monkeypatch, max_keys):
    monkeypatch.setattr(rollup_keys, "_MAX_KEYS", max_keys)
    rnd = random.Random(3)
    n = 3000
    hours = np.array([499_000 + rnd.randint(0, 30) for _ in range(n)])
    users = [rnd.choice(["u1", "u2", "", "ü-3", "u4"]) for _ in range(n)]
    models = [rnd.choice(["m1", "u1", "m2"]) for _ in range(n)]   # a text in two columns
    status = [rnd.choice([200, 429, 500]) for _ in range(n)]
    texts, statuses = rollup_keys.Codes(), rollup_keys.Codes()
    cu, cm, cs = texts.encode(users), texts.encode(models), statuses.encode(status)
    words = texts.values()
    parts = [rollup_keys.buckets(hours), (cu, words), (cm, words), (cs, statuses.values())]
    m = np.array([[1.0, rnd.random(), float(rnd.randint(0, 9))] for _ in range(n)])
    keys, sums = rollup_keys.sums(parts, m)
    want = _by_dict(list(zip(hours.tolist(), users, models, status)), m)
    assert sorted(keys) == sorted(want) and len(keys) == len(set(keys))
    for k, row in zip(keys, sums):
        assert row == pytest.approx(want[k], rel=1e-12)
        assert type(k[0]) is int and type(k[3]) is int and isinstance(k[1], str)
    _, gids = rollup_keys.group(parts)
    assert [keys[g] for g in gids] == list(zip(hours.tolist(), users, models, status))


def test_an_empty_batch_has_no_groups():
    keys, sums = rollup_keys.sums([rollup_keys.buckets(np.array([], dtype=np.int64))],
                                  np.zeros((0, 2)))
    assert keys == [] and sums.shape == (0, 2)
