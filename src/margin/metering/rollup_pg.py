"""PostgreSQL's side of the writer's rollup upserts: one ``INSERT … SELECT FROM unnest(…)
ON CONFLICT DO UPDATE`` per table and batch, each column sent as one array in
PostgreSQL's binary array format.

Why binary: psycopg adapts a Python list element by element, and the rollup columns of a
1,000-row batch are tens of thousands of values (the pair table alone is ~1,000 keys × 17
columns). Measured on the 1 M-row ledger, that adaptation took longer than the server
took to apply the upsert. The numeric columns are packed here by numpy in one step per
column (a 4-byte length and the big-endian value per element, after a 20-byte header);
the text keys are few and packed with a loop.
"""

from __future__ import annotations

import struct
from typing import Any, Sequence

import numpy as np

from margin.metering.db import Database
from margin.metering.rollups import (_FLOAT_MEASURES, _INT_KEYS, TABLES, Batch, Table)

def pg_type(t: Table, col: str) -> str:
    if col == "bucket":
        return "bigint"
    if col in t.keys:
        return "integer" if col in _INT_KEYS else "text"
    return "double precision" if col in _FLOAT_MEASURES else "bigint"


def upsert_sql(t: Table) -> str:
    """A fixed text per table (the server prepares it once), one round trip a batch."""
    cols = ("bucket",) + t.keys + t.values
    arrays = ", ".join(f"%b::{pg_type(t, c)}[]" for c in cols)
    sets = ", ".join(f"{v} = {t.name}.{v} + excluded.{v}" for v in t.values)
    return (f"INSERT INTO {t.name} ({', '.join(cols)}) SELECT * FROM unnest({arrays}) "
            f"ON CONFLICT ({', '.join(('bucket',) + t.keys)}) DO UPDATE SET {sets}")


_SQL = {t.name: upsert_sql(t) for t in TABLES}


class PgArray:
    """A column already in PostgreSQL's binary array format, passed through psycopg as it
    is; one subclass per array type (its ``array_oid``)."""

    __slots__ = ("data",)
    array_oid = 0

    def __init__(self, data: bytes) -> None:
        self.data = data


class Int8Array(PgArray):
    __slots__ = ()
    array_oid = 1016


class Int4Array(PgArray):
    __slots__ = ()
    array_oid = 1007


class Float8Array(PgArray):
    __slots__ = ()
    array_oid = 1022


class TextArray(PgArray):
    __slots__ = ()
    array_oid = 1009


# Element type -> (element OID, the array's class, numpy big-endian dtype; None: text).
_TYPES: dict[str, tuple[int, type[PgArray], str | None]] = {
    "bigint": (20, Int8Array, ">i8"), "integer": (23, Int4Array, ">i4"),
    "double precision": (701, Float8Array, ">f8"), "text": (25, TextArray, None)}


def _header(elem_oid: int, n: int) -> bytes:
    # ndim, has-nulls flag, element type, then (length, lower bound) of the one dimension.
    return struct.pack(">iiiii", 1, 0, elem_oid, n, 1)


def numeric_array(values: np.ndarray, kind: str) -> PgArray:
    """``values`` (1-D) as a ``kind`` array; floats for an integer kind are rounded
    first (the sums of integer measures are computed in float64)."""
    elem_oid, cls, dtype = _TYPES[kind]
    assert dtype is not None
    width = int(dtype[-1])
    packed = np.empty(len(values), dtype=[("len", ">i4"), ("v", dtype)])
    packed["len"] = width
    # Only floats are rounded: an int64 through rint would pass through float64 (2**53).
    packed["v"] = np.rint(values) if kind != "double precision" and values.dtype.kind == "f" \
        else values
    return cls(_header(elem_oid, len(values)) + packed.tobytes())


def text_array(values: Sequence[str]) -> PgArray:
    elem_oid, cls, _ = _TYPES["text"]
    parts = [_header(elem_oid, len(values))]
    for v in values:
        b = v.encode()
        parts.append(len(b).to_bytes(4, "big"))
        parts.append(b)
    return cls(b"".join(parts))


def columns(t: Table, batch: Batch) -> list[PgArray]:
    """The batch as one array per column (bucket, keys…, values…), keys sorted:
    concurrent writers then lock a table's rows in the same order (no deadlock)."""
    order = sorted(range(len(batch.keys)), key=batch.keys.__getitem__)
    keys = [batch.keys[i] for i in order]
    values = batch.values[order]
    out = []
    for name, col in zip(("bucket",) + t.keys, zip(*keys)):
        kind = pg_type(t, name)
        out.append(text_array(col) if kind == "text"
                   else numeric_array(np.asarray(col, dtype=np.int64), kind))
    for j, name in enumerate(t.values):
        out.append(numeric_array(values[:, j], pg_type(t, name)))
    return out


def _register(conn: Any) -> None:
    """Teach this connection to send each ``PgArray`` class as it is (binary, its OID)."""
    from psycopg import ProgrammingError
    from psycopg.adapt import Dumper, PyFormat
    from psycopg.pq import Format

    try:
        conn.adapters.get_dumper(Int8Array, PyFormat.BINARY)
        return
    except ProgrammingError:
        pass
    for cls in (Int8Array, Int4Array, Float8Array, TextArray):
        dumper = type(f"{cls.__name__}Dumper", (Dumper,), {
            "format": Format.BINARY, "oid": cls.array_oid,
            "dump": lambda self, obj: obj.data})
        conn.adapters.register_dumper(cls, dumper)


def upsert(db: Database, t: Table, batch: Batch) -> None:
    """Add ``batch`` to table ``t`` (the caller commits)."""
    _register(db.conn)
    with db._guard(), db.conn.cursor() as cur:
        cur.execute(_SQL[t.name], columns(t, batch), prepare=True)


# The pair tables' key is (pair, a, bucket, b): one pair's first value over a window is one
# range. A chart's top ten of ``b`` in that window (``console_queries.sums(among=…)``)
# then still read the whole range, every key of the model in every hour, to keep ten:
# 12-18 ms per piece at 10 M rows, measured with EXPLAIN ANALYZE on the spend page by key
# of one model. With ``b`` before the bucket each of the ten is its own short range. The
# writer's upserts update rows in place (HOT, no index touched while a page has room:
# ``rollups.PG_FILLFACTOR``), so this index costs it only the keys a batch adds. Not on
# SQLite: its pages met their targets without it, and a new index there can change which
# one its planner takes for the plain window reads.
PAIR_VALUE_INDEXES = tuple(
    f"CREATE INDEX IF NOT EXISTS {name}_value ON {name} (pair, a, b, bucket)"
    for name in ("rollup_pair_hour", "rollup_pair_day"))


def create_pair_value_indexes(db: Database) -> None:
    """Migration 11's step."""
    if db.dialect == "postgresql":
        for statement in PAIR_VALUE_INDEXES:
            db.execute(statement)
