"""Numbered schema migrations, recorded in ``schema_migrations``.

Each migration is a list of portable statements (SQLite and PostgreSQL). Add a new number;
never edit one that has shipped. A new ledger column is declared in ``metering/schema.py``
with ``since=N`` and migration N is ``schema.added_in(N)``. After migrating, the
``requests`` table is checked against the schema, so a ledger margin cannot write to is
reported when it is opened, not as a failed insert later.
"""

from __future__ import annotations

import time

from typing import Callable, Union

from margin.metering import rollup_pg, rollups, schema
from margin.metering.db import Database

# A step is a portable statement, or a function of the database for what SQL alone cannot
# do portably (filling the rollups from the rows already there).
Step = Union[str, Callable[[Database], object]]

MIGRATIONS: dict[int, list[Step]] = {
    1: [
        """CREATE TABLE IF NOT EXISTS requests (
            id TEXT PRIMARY KEY,
            ts DOUBLE PRECISION NOT NULL,
            endpoint TEXT NOT NULL,
            user_id TEXT,
            team TEXT,
            feature TEXT,
            key_id TEXT,
            requested_model TEXT,
            model TEXT,
            provider TEXT,
            route TEXT,
            status INTEGER NOT NULL,
            error_type TEXT,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cached_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
            saved_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
            estimated INTEGER NOT NULL DEFAULT 0,
            streamed INTEGER NOT NULL DEFAULT 0,
            cache TEXT NOT NULL DEFAULT 'miss',
            cache_similarity DOUBLE PRECISION,
            latency_ms DOUBLE PRECISION,
            upstream_ms DOUBLE PRECISION,
            ttft_ms DOUBLE PRECISION,
            overhead_ms DOUBLE PRECISION,
            stage_ms TEXT,
            attempts TEXT,
            prompt_hash TEXT,
            tokens_before_compression INTEGER,
            tokens_after_compression INTEGER,
            notes TEXT,
            prompt TEXT,
            response TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts)",
        "CREATE INDEX IF NOT EXISTS requests_user_ts ON requests (user_id, ts)",
        "CREATE INDEX IF NOT EXISTS requests_feature_ts ON requests (feature, ts)",
    ],
    # Virtual API keys (salted hashes only), alerts already sent, and indexes that the
    # budget start-up sums and spend reports group by.
    2: [
        """CREATE TABLE IF NOT EXISTS api_keys (
            id TEXT PRIMARY KEY,
            secret_hash TEXT NOT NULL,
            name TEXT,
            user_id TEXT,
            team TEXT,
            models TEXT,
            rpm INTEGER,
            tpm INTEGER,
            budget_usd DOUBLE PRECISION,
            budget_period TEXT,
            expires_at DOUBLE PRECISION,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            revoked_at DOUBLE PRECISION
        )""",
        """CREATE TABLE IF NOT EXISTS alerts_sent (
            alert_key TEXT PRIMARY KEY,
            sent_at DOUBLE PRECISION NOT NULL,
            payload TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS requests_team_ts ON requests (team, ts)",
        "CREATE INDEX IF NOT EXISTS requests_key_ts ON requests (key_id, ts)",
    ],
    # What the admission stage reserved on the request's budgets: a cost above it is an
    # overrun (``margin spend`` shows their sum).
    3: schema.added_in(3),
    # Every kind of token a provider bills, and the API the client spoke (``dialect``:
    # openai | messages | responses).
    4: schema.added_in(4),
    # Quality: which optimisation saved money on a row, and shadow evaluations' rows
    # (``shadow_of`` the original request, the judge and its verdict).
    5: [*schema.added_in(5),
        "CREATE INDEX IF NOT EXISTS requests_shadow_of ON requests (shadow_of)"],
    # A/B experiments: the experiment and arm each request was assigned to.
    6: [*schema.added_in(6),
        "CREATE INDEX IF NOT EXISTS requests_experiment_ts ON requests (experiment, ts)"],
    # Hourly and daily rollups the console reads (metering/rollups.py), filled from the
    # rows already there; the request log's keyset index.
    7: [*rollups.ddl(7), rollups.rebuild_step(7)],
    # No rollup holds the tokens before and after compression: ``margin ledger stats``
    # sums them on this partial index (only the compressed rows) instead of scanning.
    8: ["CREATE INDEX IF NOT EXISTS requests_compressed_ts ON requests "
        "(ts, tokens_before_compression, tokens_after_compression) "
        "WHERE tokens_before_compression IS NOT NULL"],
    # Rollups for the pages migration 7's could not answer at ten million rows (per day
    # and model, per week, pairs of dimensions filtered on one and grouped on the other,
    # histograms per team and feature), filled from the rows already there
    # (metering/rollups.py). And the request table's indexes, for the writer's sake and
    # the bot check's: (ts) is the prefix of (ts, id), so every query it served the other
    # serves, and each index is one more B-tree insert per row; (user_id, ts) gains the
    # prompt hash, so a user's recent requests (the spend page's bot check) are read from
    # the index alone.
    9: [rollups.create_step(9), rollups.rebuild_step(9),
        "CREATE INDEX IF NOT EXISTS requests_user_ts_hash ON requests "
        "(user_id, ts, prompt_hash)",
        "DROP INDEX IF EXISTS requests_user_ts",
        "DROP INDEX IF EXISTS requests_ts"],
    # A key's role (NULL: user): viewer and admin keys may open the console.
    10: ["ALTER TABLE api_keys ADD COLUMN role TEXT"],
    # PostgreSQL: the pair rollups also by (pair, a, b, bucket), so a chart's top values
    # of one pair over a window are short ranges (metering/rollup_pg.py).
    11: [rollup_pg.create_pair_value_indexes],
}


def migrate(db: Database, migrations: dict[int, list[Step]] | None = None) -> list[int]:
    """Apply the migrations this database lacks; return the versions applied."""
    migrations = MIGRATIONS if migrations is None else migrations
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
               "version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
    db.commit()
    applied: list[int] = []
    db.lock_for_migrations()
    try:
        done = {r[0] for r in db.query("SELECT version FROM schema_migrations")}
        for version in sorted(migrations):
            if version in done:
                continue
            for statement in migrations[version]:
                if callable(statement):
                    # A step that reads rows (the rollup rebuild) needs the columns margin
                    # writes: a table without them is named as such, not as a SQL error.
                    if migrations is MIGRATIONS:
                        check(db)
                    statement(db)
                else:
                    db.execute(statement)
            db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                       (version, time.time()))
            applied.append(version)
        db.commit()
    except Exception:
        db.rollback()
        raise
    if migrations is MIGRATIONS:
        check(db)
    return applied


def check(db: Database) -> None:
    """Raise ``ConfigError`` when the ledger's table lacks a column margin writes."""
    where = db.url.split("@")[-1]  # never a password
    schema.check(db.columns(schema.TABLE), db.dialect, where)
