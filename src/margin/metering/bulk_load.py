"""Loading many ledger rows at once (a benchmark's ledger, an import): without the
per-row work of the writer, with the rollups built once at the end.

Indexes on ``requests`` are dropped for the load and built again after it (building an
index over sorted data beats updating it row by row); rows go in with ``COPY`` on
PostgreSQL and large ``executemany`` transactions on SQLite.
"""

from __future__ import annotations

import time
from typing import Iterable

from margin.metering import rollups, schema
from margin.metering.db import Database
from margin.metering.migrations import MIGRATIONS


def row_count(db: Database) -> int:
    return int(db.query("SELECT COUNT(*) FROM requests")[0][0])


def request_indexes() -> list[str]:
    """The migrations' ``CREATE INDEX`` statements on ``requests`` (less those a later
    migration dropped)."""
    out: dict[str, str] = {}
    for version in sorted(MIGRATIONS):
        for s in MIGRATIONS[version]:
            if not isinstance(s, str):
                continue
            if s.startswith("CREATE INDEX") and " ON requests " in s:
                out[s.split()[5]] = s
            elif s.startswith("DROP INDEX IF EXISTS "):
                out.pop(s.split()[4], None)
    return list(out.values())


def load(db: Database, chunks: Iterable[list[tuple]]) -> dict[str, float]:
    """Insert every chunk (tuples in ``schema.NAMES`` order) into a migrated ledger, then
    rebuild its indexes and rollups; returns the seconds each step took."""
    indexes = request_indexes()
    for statement in indexes:
        db.execute("DROP INDEX IF EXISTS " + statement.split()[5])
    db.commit()
    t0 = time.perf_counter()
    if db.dialect == "postgresql":
        with db.conn.cursor() as cur:
            with cur.copy(f"COPY {schema.TABLE} ({', '.join(schema.NAMES)}) FROM STDIN") as copy:
                for chunk in chunks:
                    for row in chunk:
                        copy.write_row(row)
        db.commit()
    else:
        db.conn.execute("PRAGMA synchronous=OFF")
        sql = schema.insert_sql()
        for chunk in chunks:
            db.conn.executemany(sql, chunk)
            db.commit()
        db.conn.execute("PRAGMA synchronous=NORMAL")
    t1 = time.perf_counter()
    for statement in indexes:
        db.execute(statement)
    db.commit()
    t2 = time.perf_counter()
    rollups.rebuild(db)
    db.commit()
    if db.dialect == "postgresql":
        db.conn.autocommit = True
        db.execute("VACUUM ANALYZE")
        db.conn.autocommit = False
    else:
        db.execute("ANALYZE")
        db.commit()
    return {"insert_s": t1 - t0, "index_s": t2 - t1, "rollup_s": time.perf_counter() - t2}
