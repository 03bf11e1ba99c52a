"""``margin bench ledger``: the console's page queries on a large ledger, and the writer's
sustained rate with rollups on.

1. Builds a ledger of ``--rows`` rows over ``--days`` days ending now, with the shapes real
   traffic has: Pareto (Zipf) users and features, a daily cycle with a working-hours peak,
   quiet weekends, slow growth, bursts of a few hours, a few bot-like users (high rate,
   repeated prompts). Rows are generated with numpy and inserted in large batches (SQLite:
   ``executemany`` in big transactions; PostgreSQL: ``COPY``), then the rollups are built
   with ``rollups.rebuild`` (the code migration 7 and ``margin ledger rollup --rebuild`` run).
2. Times each page as the gateway answers it — the console's handler with its parameter
   checks and its query functions, on a pooled connection — for several filter
   combinations: P50 and P95 over ``--repeat`` runs (the forecast pages: after their hourly
   fit, which is timed separately as "cold").
3. Writes ``--writer-rows`` rows through the real ``LedgerWriter`` (journal on, default
   batch size) into that ledger and reports the sustained rows/s.

Targets (issue 17): each page P95 ≤ 200 ms at 10 M rows / 90 days; writer ≥ 5,000 rows/s.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import click
import numpy as np

from margin.bench.report import header, write_section
from margin.config import LedgerConfig, Settings
from margin.metering import bulk_load, schema
from margin.metering.db import connect, is_postgres
from margin.metering.ledger import LedgerWriter
from margin.metering.migrations import migrate
from margin.types import AdminRequest

TARGET_P95_MS = 200.0
TARGET_WRITER_ROWS_S = 5000.0
HOUR_S = 3600
DAY_S = 86_400
# (name, USD per million input tokens, per million output, median upstream ms, share)
MODELS = [("gpt-4o-mini", 0.15, 0.6, 600, 0.38), ("gpt-4o", 2.5, 10.0, 1400, 0.22),
          ("claude-haiku", 0.8, 4.0, 700, 0.15), ("claude-sonnet", 3.0, 15.0, 1800, 0.1),
          ("local-llama", 0.02, 0.02, 300, 0.1), ("embed-small", 0.02, 0.0, 60, 0.05)]
N_TEAMS, N_FEATURES, N_BOTS = 40, 12, 3
STAGE_NAMES = ("auth", "resolve", "admission", "exact_cache", "semantic_cache", "router")
COLUMNS = schema.NAMES


def _zipf(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


class Shapes:
    """Who sends what, and when (fixed by the seed)."""

    def __init__(self, rows: int, days: int, now_s: float, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        rng = self.rng
        self.rows, self.days = rows, days
        self.n_users = int(np.clip(rows // 5000, 50, 5000))
        self.user_p = _zipf(self.n_users, 1.1)
        self.user_team = rng.choice(N_TEAMS, self.n_users, p=_zipf(N_TEAMS, 0.8))
        self.feature_p = _zipf(N_FEATURES, 1.0)
        self.model_p = np.array([m[4] for m in MODELS])
        self.model_p /= self.model_p.sum()
        self.end_h = int(now_s // HOUR_S)
        self.start_h = self.end_h - days * 24
        hours = np.arange(self.start_h, self.end_h)
        hod = (hours % 24).astype(float)
        dow = ((hours // 24) + 3) % 7                   # 1970-01-01 was a Thursday
        daily = 0.15 + np.clip(np.sin(np.pi * (hod - 6) / 14), 0, None) ** 1.5
        weekly = np.where(dow >= 5, 0.35, 1.0)
        growth = 1.0 + 0.25 * (hours - self.start_h) / max(1, len(hours))
        bursts = np.ones(len(hours))
        for start in rng.integers(0, len(hours) - 6, size=max(3, days // 7)):
            bursts[start:start + rng.integers(1, 7)] *= rng.uniform(2.5, 6.0)
        w = daily * weekly * growth * bursts
        self.per_hour = rng.multinomial(rows, w / w.sum())
        self.bot_users = rng.choice(self.n_users // 2, N_BOTS, replace=False) + self.n_users // 2

    def chunks(self, chunk_rows: int = 250_000, id_prefix: str = "b") -> Iterator[list[tuple]]:
        """Rows in time order, as INSERT tuples (``schema.NAMES`` order)."""
        h, n_h = 0, len(self.per_hour)
        serial = 0
        while h < n_h:
            take, hours = 0, []
            while h < n_h and (take < chunk_rows or not hours):
                hours.append(h)
                take += int(self.per_hour[h])
                h += 1
            counts = self.per_hour[hours]
            base = np.repeat((self.start_h + np.asarray(hours)) * HOUR_S, counts).astype(float)
            ts = np.sort(base + self.rng.random(take) * HOUR_S) if take else base
            yield self._rows(ts, id_prefix, serial)
            serial += take

    def _rows(self, ts: np.ndarray, prefix: str, serial: int) -> list[tuple]:
        rng, n = self.rng, len(ts)
        users = rng.choice(self.n_users, n, p=self.user_p)
        bots = rng.random(n) < 0.03
        users[bots] = rng.choice(self.bot_users, int(bots.sum()))
        teams = self.user_team[users]
        features = rng.choice(N_FEATURES, n, p=self.feature_p)
        models = rng.choice(len(MODELS), n, p=self.model_p)
        second_key = rng.random(n) < 0.1
        status = rng.choice([200, 429, 500, 499], n, p=[0.965, 0.02, 0.01, 0.005])
        cache = rng.choice(3, n, p=[0.72, 0.2, 0.08])
        cache[status != 200] = 0
        p_tok = np.minimum(rng.lognormal(6.0, 1.0, n), 120_000).astype(int)
        c_tok = np.minimum(rng.lognormal(5.0, 0.8, n), 8000).astype(int)
        c_tok[status != 200] = 0
        price_in = np.array([m[1] for m in MODELS])[models] / 1e6
        price_out = np.array([m[2] for m in MODELS])[models] / 1e6
        full = p_tok * price_in + c_tok * price_out
        cost = np.where(cache == 0, full, 0.0)
        saved = np.where(cache != 0, full, 0.0)
        up = rng.lognormal(np.log(np.array([m[3] for m in MODELS])[models]), 0.5)
        up[cache != 0] = 0.0
        overhead = rng.lognormal(np.log(0.4), 0.5, n)
        stages = rng.lognormal(np.log(0.02), 0.8, (n, len(STAGE_NAMES)))
        hashes = rng.integers(0, 1 << 40, n)
        hashes[bots] = rng.integers(0, 20, int(bots.sum()))
        compressed = rng.random(n) < 0.15
        comp_saved = p_tok * price_in * 0.2
        model_names = np.array([m[0] for m in MODELS], dtype=object)[models]
        cache_names = np.array(["miss", "exact", "semantic"], dtype=object)[cache]
        ids = [f"{prefix}{serial + i:011x}" for i in range(n)]
        user_names = [f"user-{u:05d}" for u in users.tolist()]
        key_names = [f"key-{u:05d}{'b' if b else 'a'}"
                     for u, b in zip(users.tolist(), second_key.tolist())]
        stage_ms = ['{"auth":%.4f,"resolve":%.4f,"admission":%.4f,"exact_cache":%.4f,'
                    '"semantic_cache":%.4f,"router":%.4f}' % tuple(row) for row in stages.tolist()]
        attempts = [None if c != "miss" else f'[{{"model":"{m}","status":{st}}}]'
                    for c, m, st in zip(cache_names.tolist(), model_names.tolist(),
                                        status.tolist())]
        notes = [f'{{"compression_saved_usd":{v:.9f}}}' if c else None
                 for c, v in zip(compressed.tolist(), comp_saved.tolist())]
        columns = {
            "id": ids, "ts": ts.tolist(), "endpoint": ["chat"] * n, "user_id": user_names,
            "team": [f"team-{t:02d}" for t in teams.tolist()],
            "feature": [f"feature-{x:02d}" for x in features.tolist()], "key_id": key_names,
            "requested_model": model_names.tolist(), "model": model_names.tolist(),
            "provider": ["openai"] * n, "route": [None] * n, "status": status.tolist(),
            "error_type": [None if st == 200 else "upstream_error" for st in status.tolist()],
            "prompt_tokens": p_tok.tolist(), "completion_tokens": c_tok.tolist(),
            "cached_tokens": [0] * n, "cost_usd": cost.tolist(), "saved_usd": saved.tolist(),
            "estimated": [0] * n, "streamed": [0] * n, "cache": cache_names.tolist(),
            "cache_similarity": [0.96 if c == 2 else None for c in cache.tolist()],
            "latency_ms": (up + overhead).tolist(), "upstream_ms": up.tolist(),
            "ttft_ms": [None] * n, "overhead_ms": overhead.tolist(), "stage_ms": stage_ms,
            "attempts": attempts, "prompt_hash": [f"{h:010x}" for h in hashes.tolist()],
            "tokens_before_compression": [None] * n, "tokens_after_compression": [None] * n,
            "notes": notes, "prompt": [None] * n, "response": [None] * n,
            "reserved_usd": [None] * n, "cache_write_tokens": [0] * n,
            "reasoning_tokens": [0] * n, "dialect": ["openai"] * n}
        columns["optimization"] = [None if c == "miss" else f"{c}_cache"
                                   for c in cache_names.tolist()]
        # Columns this generator has no shape for (shadow rows, experiments) stay NULL.
        return list(zip(*(columns.get(c, [None] * n) for c in COLUMNS)))


def build(url: str, shapes: Shapes, reuse: bool = False) -> dict[str, float] | None:
    """Fill an empty ledger; returns seconds spent inserting, indexing, building rollups
    (None when ``reuse`` and the ledger already holds rows: it is measured as it is)."""
    db = connect(url)
    try:
        migrate(db)
        if bulk_load.row_count(db):
            if reuse:
                return None
            raise click.UsageError(f"{url} already holds rows: give an empty ledger "
                                   "(or --reuse one built before)")
        return bulk_load.load(db, shapes.chunks())
    finally:
        db.close()


def page_cases(shapes: Shapes) -> list[tuple[str, str, dict[str, str]]]:
    """(label, page, query): each page, with the filter combinations people use."""
    top_user = "user-00000"
    return [
        ("overview", "overview", {}),
        ("overview, one team", "overview", {"team": "team-00"}),
        ("spend by user, 30 d, daily", "spend", {"by": "user", "since": "30d"}),
        ("spend by team, 7 d, hourly", "spend", {"by": "team", "since": "7d", "bucket": "hour"}),
        ("spend by model, 90 d, daily", "spend", {"by": "model", "since": "90d"}),
        ("spend by feature, 30 d, one team", "spend", {"by": "feature", "since": "30d",
                                                       "team": "team-01"}),
        ("spend by key, 7 d, one model", "spend", {"by": "key", "since": "7d",
                                                   "model": "gpt-4o"}),
        ("spend by user, 24 h, errors", "spend", {"by": "user", "since": "24h",
                                                  "status": "error"}),
        ("requests, newest", "requests", {"limit": "50"}),
        ("requests, one user", "requests", {"limit": "50", "user": top_user}),
        ("requests, errors, 7 d", "requests", {"limit": "50", "status": "error",
                                               "since": "7d"}),
        ("requests, semantic hits of a model", "requests", {
            "limit": "50", "cache": "semantic", "model": "claude-haiku"}),
        ("budgets", "budgets", {}),
        ("capacity, 7 d", "capacity", {"horizon": "7d"}),
        ("anomalies, 7 d", "anomalies", {"since": "7d"}),
        ("alerts", "alerts", {}),
    ]


def _settings(url: str) -> Settings:
    return Settings.model_validate({
        "ledger": {"url": url},
        "limits": {"budgets": [{"scope": "team", "name": "team-00", "usd": 50_000,
                                "period": "month"},
                               {"scope": "user", "name": "*", "usd": 500, "period": "month"},
                               {"scope": "feature", "name": "feature-00", "usd": 900,
                                "period": "day"}]},
        "capacity": {"gpt-4o-mini": {"rpm": 3000}, "local-llama": {"replica_rps": 0.5,
                                                                  "replicas": 2}}})


def time_pages(url: str, shapes: Shapes, repeat: int) -> list[dict[str, Any]]:
    from margin.gateway.console import Console

    console = Console(_settings(url))
    out = []

    async def run() -> None:
        for label, page, query in page_cases(shapes):
            handler = console.handler(page)
            req = AdminRequest("GET", "", {k: [v] for k, v in query.items()}, {}, b"")
            t0 = time.perf_counter()
            await handler(req)     # the first call opens a connection, fits forecasts
            cold_ms = (time.perf_counter() - t0) * 1000
            samples = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                await handler(req)
                samples.append((time.perf_counter() - t0) * 1000)
            p50, p95 = np.percentile(samples, [50, 95])
            out.append({"page": label, "p50_ms": round(float(p50), 1),
                        "p95_ms": round(float(p95), 1), "first_ms": round(cold_ms, 1),
                        "ok": bool(p95 <= TARGET_P95_MS)})
        # A deep page of the request log: the cursor of page 20.
        handler = console.handler("requests")
        cursor = None
        for _ in range(20):
            q = {"limit": ["50"], **({"cursor": [cursor]} if cursor else {})}
            _, body = await handler(AdminRequest("GET", "", q, {}, b""))
            cursor = body["next_cursor"]
        q = {"limit": ["50"], "cursor": [cursor]}
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            await handler(AdminRequest("GET", "", q, {}, b""))
            samples.append((time.perf_counter() - t0) * 1000)
        p50, p95 = np.percentile(samples, [50, 95])
        out.append({"page": "requests, page 21 (cursor)", "p50_ms": round(float(p50), 1),
                    "p95_ms": round(float(p95), 1), "first_ms": None,
                    "ok": bool(p95 <= TARGET_P95_MS)})

    asyncio.run(run())
    console.pool.close()
    return out


def writer_rate(url: str, shapes: Shapes, rows: int, workdir: Path) -> dict[str, Any]:
    """Rows/s through the real writer with rollups on: ``rows`` rows submitted at once,
    timed until the last is committed."""
    cfg = LedgerConfig(url=url, journal_path=str(workdir / "journal"),
                       spool_path=str(workdir / "spool"))
    gen = Shapes(rows, 1, time.time(), seed=99)
    batch = [dict(zip(COLUMNS, r)) for chunk in gen.chunks(id_prefix="w-" + uuid.uuid4().hex[:6])
             for r in chunk]
    w = LedgerWriter(cfg)
    w.start()
    t0 = time.perf_counter()
    for r in batch:
        w.submit(r)
    w.close(timeout_s=600)
    elapsed = time.perf_counter() - t0
    return {"rows": len(batch), "seconds": round(elapsed, 2),
            "rows_per_s": round(len(batch) / elapsed), "written": w.counters.written,
            "spooled": w.counters.spooled,
            "ok": bool(len(batch) / elapsed >= TARGET_WRITER_ROWS_S
                       and w.counters.written == len(batch))}


def _markdown(cmd: str, dialect: str, n: int, days: int, timings: dict[str, float] | None,
              pages: list[dict[str, Any]], writer: dict[str, Any], load: str) -> str:
    lines = [f"### {dialect}: {n:,} rows over {days} days", "",
             header(cmd).rstrip() + f"  \nLoad average before / after: {load}", "",
             (f"Built in {timings['insert_s']:.0f} s (insert) + {timings['index_s']:.0f} s "
              f"(indexes) + {timings['rollup_s']:.0f} s (rollups, `rollups.rebuild`)."
              if timings else "Measured on a ledger built by an earlier run (`--reuse`)."), "",
             "| page | P50 ms | P95 ms | first call ms | P95 ≤ 200 ms |",
             "| --- | --- | --- | --- | --- |"]
    for p in pages:
        first = "-" if p["first_ms"] is None else f"{p['first_ms']:.1f}"
        lines.append(f"| {p['page']} | {p['p50_ms']:.1f} | {p['p95_ms']:.1f} | {first} | "
                     f"{'yes' if p['ok'] else '**no**'} |")
    lines += ["", "Writer with rollups on (journal on; batches of 500, of up to "
              f"{LedgerConfig().catch_up_batch_size:,} while rows wait): {writer['rows']:,} rows "
              f"in {writer['seconds']} s = **{writer['rows_per_s']:,} rows/s** "
              f"(target ≥ 5,000: {'met' if writer['ok'] else '**not met**'})."]
    return "\n".join(lines)


INTRO = ("The console's pages on a ledger built by `margin bench ledger` (each page's handler "
         "with its parameter checks and query functions, on a pooled connection; P50/P95 "
         "over repeated runs), and the LedgerWriter's sustained rate with rollups on. "
         "Targets: each page P95 ≤ 200 ms at 10 M rows / 90 days, writer ≥ 5,000 rows/s.")


def merged_section(path: Path, dialect: str, markdown: str) -> str:
    """The ``ledger`` section with this dialect's block replaced (the other one kept)."""
    blocks: dict[str, str] = {}
    text = path.read_text() if path.exists() else ""
    start, end = "<!-- bench:ledger -->", "<!-- /bench:ledger -->"
    if start in text and end in text:
        body = text.split(start, 1)[1].split(end, 1)[0]
        for part in body.split("\n### ")[1:]:
            name = part.split(":", 1)[0].strip()
            blocks[name] = "### " + part.strip()
    blocks[dialect] = markdown.strip()
    order = [d for d in ("SQLite", "PostgreSQL") if d in blocks]
    return "## Ledger and console\n\n" + INTRO + "\n\n" + "\n\n".join(blocks[d] for d in order)


@click.command("ledger")
@click.option("--rows", type=click.IntRange(1000), default=10_000_000, show_default=True,
              help="Rows in the ledger built.")
@click.option("--days", type=click.IntRange(2, 366), default=90, show_default=True,
              help="Days the rows span, ending now.")
@click.option("--db", "db_url", default=None,
              help="An empty ledger to build (SQLite file or postgresql:// URL, e.g. with "
                   "?options=-csearch_path%3Dbench_ledger); default a temporary SQLite file.")
@click.option("--repeat", type=click.IntRange(3), default=20, show_default=True,
              help="Timed runs of each page.")
@click.option("--writer-rows", type=click.IntRange(100), default=100_000, show_default=True,
              help="Rows written through the LedgerWriter for its rate.")
@click.option("--seed", type=int, default=17, show_default=True)
@click.option("--reuse", is_flag=True,
              help="Measure a ledger an earlier run built at --db instead of refusing it.")
@click.option("--out", type=click.Path(), default="docs/benchmarks.md", show_default=True)
@click.option("--no-write", is_flag=True, help="Print only; leave docs/benchmarks.md alone.")
def ledger(rows: int, days: int, db_url: str | None, repeat: int, writer_rows: int, seed: int,
           reuse: bool, out: str, no_write: bool) -> None:
    """Page queries of the console on a large ledger, and the writer's rate (issue 17)."""
    with tempfile.TemporaryDirectory(prefix="margin-bench-ledger-") as tmp:
        url = db_url or os.path.join(tmp, "ledger.db")
        dialect = "PostgreSQL" if is_postgres(url) else "SQLite"
        load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        shapes = Shapes(rows, days, time.time(), seed)
        click.echo(f"building {rows:,} rows over {days} days in {dialect} …")
        timings = build(url, shapes, reuse)
        if timings:
            click.echo(f"  insert {timings['insert_s']:.0f} s, indexes {timings['index_s']:.0f} "
                       f"s, rollups {timings['rollup_s']:.0f} s")
        pages = time_pages(url, shapes, repeat)
        for p in pages:
            click.echo(f"  {p['page']:<40} P50 {p['p50_ms']:8.1f} ms  P95 {p['p95_ms']:8.1f} ms"
                       f"  first {p['first_ms']} ms")
        writer = writer_rate(url, shapes, writer_rows, Path(tmp))
        click.echo(f"  writer: {writer['rows_per_s']:,} rows/s ({writer['rows']:,} rows, "
                   f"{writer['seconds']} s)")
        load = f"{load_before} / " + " ".join(f"{x:.2f}" for x in os.getloadavg())
        cmd = f"margin bench ledger --rows {rows} --days {days}" + (
            " --db postgresql://…" if is_postgres(url) else "")
        md = _markdown(cmd, dialect, rows, days, timings, pages, writer, load)
        if not no_write:
            write_section("ledger", merged_section(Path(out), dialect, md), out)
            click.echo(f"wrote {out}")
        else:
            click.echo(md)
