"""The ledger's ``requests`` table, column by column: the one place its shape is written.

The writer's INSERT, the defaults of NOT NULL columns, the check that a database's table
has what margin expects, and the readers' column types all come from ``COLUMNS``.

Adding a column: append a ``Column`` with ``since`` set to a new migration number, and add
that migration as ``added_in(N)`` in ``metering/migrations`` (shipped migrations are never
edited; migration 1 creates the table as it first shipped). Then fill it in the row builder
(``gateway/record.py``) and read it through ``metering/queries.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from margin.errors import ConfigError

TABLE = "requests"

# Portable type -> how each dialect reports it back (PRAGMA table_info / information_schema).
_SQL_TYPES: dict[type, dict[str, str]] = {
    str: {"sqlite": "TEXT", "postgresql": "text"},
    int: {"sqlite": "INTEGER", "postgresql": "integer"},
    float: {"sqlite": "DOUBLE PRECISION", "postgresql": "double precision"},
}


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    py: type            # str, int or float: the value the row holds
    nullable: bool = True
    default: Any = None  # what an absent value means; only NOT NULL columns have one
    since: int = 1      # the migration that adds it

    def sql_type(self, dialect: str) -> str:
        return _SQL_TYPES[self.py][dialect]

    def ddl(self) -> str:
        """The column as ``ALTER TABLE … ADD COLUMN`` (and CREATE TABLE) spell it."""
        parts = [self.name, _SQL_TYPES[self.py]["sqlite"]]
        if not self.nullable:
            parts.append("NOT NULL")
        if self.default is not None:
            parts.append("DEFAULT " + (f"'{self.default}'" if isinstance(self.default, str)
                                       else str(self.default)))
        return " ".join(parts)


def _c(name: str, py: type, default: Any = None, *, null: bool = True, since: int = 1) -> Column:
    return Column(name, py, nullable=null and default is None, default=default, since=since)


COLUMNS: tuple[Column, ...] = (
    _c("id", str, null=False),
    _c("ts", float, null=False),                 # UNIX seconds when the request arrived
    _c("endpoint", str, "unknown"),
    _c("user_id", str),
    _c("team", str),
    _c("feature", str),
    _c("key_id", str),
    _c("requested_model", str),
    _c("model", str),                            # the model that served it
    _c("provider", str),
    _c("route", str),
    _c("status", int, 0),
    _c("error_type", str),
    _c("prompt_tokens", int, 0),
    _c("completion_tokens", int, 0),
    _c("cached_tokens", int, 0),
    _c("cost_usd", float, 0.0),
    _c("saved_usd", float, 0.0),
    _c("estimated", int, 0),
    _c("streamed", int, 0),
    _c("cache", str, "miss"),
    _c("cache_similarity", float),
    _c("latency_ms", float),
    _c("upstream_ms", float),
    _c("ttft_ms", float),
    _c("overhead_ms", float),
    _c("stage_ms", str),                         # JSON: {stage: ms}
    _c("attempts", str),                         # JSON: one object per upstream attempt
    _c("prompt_hash", str),
    _c("tokens_before_compression", int),
    _c("tokens_after_compression", int),
    _c("notes", str),                            # JSON: the row's extra payload
    _c("prompt", str),                           # only with ledger.log_content
    _c("response", str),
    # what admission reserved on the request's budgets: a cost above it is an overrun
    _c("reserved_usd", float, since=3),
    # prompt tokens written to the provider's prompt cache (Anthropic's
    # cache_creation_input_tokens, Bedrock's cacheWriteInputTokens), billed above input price
    _c("cache_write_tokens", int, 0, since=4),
    _c("reasoning_tokens", int, 0, since=4),     # completion tokens spent thinking (a part)
    _c("dialect", str, "openai", since=4),       # openai | messages | responses
    # what saved money on this row: exact_cache, semantic_cache, route:<name>,
    # cascade:<name>, compression, downgrade (NULL: nothing did)
    _c("optimization", str, since=5),
    # what it saved (USD; for a route or downgrade an estimate: see quality/optimizations.py)
    _c("optimization_saved_usd", float, since=5),
    # a shadow evaluation's row: the request it re-ran the reference way, the judge, and
    # its verdict (1 agree, 0 disagree, NULL not judged: failed, or the judge could not)
    _c("shadow_of", str, since=5),
    _c("judge", str, since=5),
    _c("agreement", int, since=5),
    _c("judge_score", float, since=5),
    _c("experiment", str, since=6),              # the A/B experiment the request is in
    _c("arm", str, since=6),                     # and its arm
)

NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
# NOT NULL columns and what an absent value means.
DEFAULTS: dict[str, Any] = {c.name: c.default for c in COLUMNS if c.default is not None}


def insert_sql() -> str:
    cols = ", ".join(NAMES)
    marks = ", ".join("?" for _ in NAMES)
    # Idempotent on the request id only; any other violation is an error we want to see.
    return f"INSERT INTO {TABLE} ({cols}) VALUES ({marks}) ON CONFLICT (id) DO NOTHING"


def values(row: dict[str, Any]) -> tuple:
    """One row (a dict by column name) as the INSERT's parameters, defaults filled in."""
    get = row.get
    return tuple(DEFAULTS[n] if (v := get(n)) is None and n in DEFAULTS else v for n in NAMES)


def added_in(version: int) -> list[str]:
    """Migration ``version``'s statements for the columns it adds (``Column.since``)."""
    return [f"ALTER TABLE {TABLE} ADD COLUMN {c.ddl()}" for c in COLUMNS if c.since == version]


def mismatches(found: dict[str, str], dialect: str) -> list[str]:
    """What is wrong with a table whose columns are ``found`` (name -> type as the database
    reports it); columns margin does not know are allowed."""
    out = []
    for c in COLUMNS:
        have = found.get(c.name)
        if have is None:
            out.append(f"column {c.name} is missing")
        elif have.lower() != c.sql_type(dialect).lower():
            out.append(f"column {c.name} is {have}, expected {c.sql_type(dialect)}")
    return out


def check(found: dict[str, str], dialect: str, where: str) -> None:
    problems = mismatches(found, dialect)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(f"{where}: the ledger's {TABLE} table is not what margin writes: "
                          f"{problems[0]}{more}")
