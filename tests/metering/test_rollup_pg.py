"""The PostgreSQL upsert's binary arrays: what the server reads back is what was packed."""

from __future__ import annotations

import numpy as np

from margin.metering import rollup_pg
from margin.metering.db import connect


def test_binary_arrays_read_back_exactly(pg_url):
    db = connect(pg_url)
    try:
        rollup_pg._register(db.conn)
        texts = ["", "team-01", 'a "quoted", {braced} \\ value', "naïve ✓", "NULL", "x" * 300]
        ints = np.array([0, -1, 2**53 + 1, -(2**62), 7], dtype=np.int64)
        floats = np.array([0.1, -0.0, 1e-300, 123456.789012345678, 2.0**-1074, 1e308])
        sums = np.array([2.9999999, 3.0000001, -4.5, 10.0])   # integer measures, as floats
        with db.conn.cursor() as cur:
            cur.execute("SELECT %b::text[], %b::bigint[], %b::double precision[], "
                        "%b::integer[], %b::bigint[]",
                        [rollup_pg.text_array(texts),
                         rollup_pg.numeric_array(ints, "bigint"),
                         rollup_pg.numeric_array(floats, "double precision"),
                         rollup_pg.numeric_array(np.array([200, 429, 599]), "integer"),
                         rollup_pg.numeric_array(sums, "bigint")])
            t, i, f, s, r = cur.fetchone()
        assert t == texts
        assert i == ints.tolist()
        assert f == floats.tolist()     # bit for bit, not approximately
        assert s == [200, 429, 599]
        assert r == [3, 3, -4, 10]      # rounded half to even, like np.rint
    finally:
        db.close()


def test_an_empty_batch_column_is_an_empty_array(pg_url):
    db = connect(pg_url)
    try:
        rollup_pg._register(db.conn)
        with db.conn.cursor() as cur:
            cur.execute("SELECT %b::text[], %b::bigint[]",
                        [rollup_pg.text_array([]),
                         rollup_pg.numeric_array(np.array([]), "bigint")])
            assert cur.fetchone() == ([], [])
    finally:
        db.close()
