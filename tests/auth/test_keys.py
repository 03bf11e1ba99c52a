"""Virtual keys: stored only as salted hashes, verified, revoked, updated, expired; on
SQLite and PostgreSQL. Two verifiers (two replicas) see a revocation at once via Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from margin.auth.config import AuthConfig
from margin.auth.keys import KeyStore, check_secret, hash_secret, parse_expiry, parse_token
from margin.auth.verifier import KeyVerifier
from margin.errors import AuthenticationError, InputError
from margin.metering.db import connect


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "keys.db")
    return request.getfixturevalue("pg_url")


def test_keys_are_stored_only_as_salted_hashes(db_url):
    store = KeyStore(connect(db_url))
    record, token = store.create(user="alice", team="research", models=["small"], rpm=60,
                                 budget_usd=5.0)
    key_id, secret = parse_token(token)
    assert key_id == record.id and record.budget_period == "month"
    rows = store.db.query("SELECT * FROM api_keys")
    assert len(rows) == 1 and not any(secret in str(v) for v in rows[0])
    (stored,) = store.db.query("SELECT secret_hash FROM api_keys")[0]
    assert stored.startswith("scrypt$") and check_secret(secret, stored)
    assert not check_secret(secret[:-1] + ("A" if secret[-1] != "A" else "B"), stored)
    # The same secret hashes differently each time (per-key salt).
    assert hash_secret(secret) != hash_secret(secret)


def test_list_update_revoke(db_url):
    store = KeyStore(connect(db_url))
    a, _ = store.create(user="alice")
    b, _ = store.create(user="bob", team="t1")
    assert [k.id for k in store.list()] == [a.id, b.id]
    updated = store.update(b.id, {"rpm": 10, "models": ["x", "y"], "team": None})
    assert (updated.rpm, updated.models, updated.team) == (10, ("x", "y"), None)
    revoked = store.revoke(a.id)
    assert revoked.revoked_at is not None and revoked.problem(revoked.revoked_at + 1)
    assert [k.id for k in store.list()] == [b.id]
    assert len(store.list(include_revoked=True)) == 2
    with pytest.raises(InputError):
        store.update(b.id, {"rpm": 0})
    with pytest.raises(InputError):
        store.update(b.id, {"secret_hash": "x"})
    with pytest.raises(InputError):
        store.revoke("0123456789abcdef")


def test_parse_token_and_expiry():
    assert parse_token("mk-0123456789abcdef-" + "a" * 43) == ("0123456789abcdef", "a" * 43)
    for bad in ("", "sk-123", "mk-0123-abc", "mk-0123456789abcdeg-" + "a" * 43,
                "mk-0123456789abcdef-short"):
        assert parse_token(bad) is None
    assert parse_expiry("30d", 1000.0) == 1000.0 + 30 * 86400
    assert parse_expiry("2030-01-01", 0) == 1893456000.0
    assert parse_expiry("never") is None
    with pytest.raises(InputError):
        parse_expiry("tomorrow")


def test_verifier_caches_and_refuses(tmp_path):
    url = str(tmp_path / "k.db")
    store = KeyStore(connect(url))
    record, token = store.create(user="alice", expires_at=None)
    expiring, expiring_token = store.create(user="eve", expires_at=2000.0)
    now = [1000.0]
    v = KeyVerifier(url, AuthConfig(cache_ttl_s=2.0), clock=lambda: now[0],
                    wall=lambda: now[0])

    async def main() -> None:
        await v.start()
        got = await asyncio.gather(*(v.verify(token) for _ in range(20)))
        assert all(g.id == record.id and g.user == "alice" for g in got)
        for bad in ("nonsense", token[:-2] + "zz", "mk-ffffffffffffffff-" + "a" * 43):
            with pytest.raises(AuthenticationError):
                await v.verify(bad)
        assert (await v.verify(expiring_token)).user == "eve"
        # Revoked by another process (the CLI): seen once the cache entry is older than 2 s.
        store.revoke(record.id)
        assert (await v.verify(token)).id == record.id
        now[0] += 2.5
        with pytest.raises(AuthenticationError, match="revoked"):
            await v.verify(token)
        now[0] = 2000.0
        with pytest.raises(AuthenticationError, match="expired"):
            await v.verify(expiring_token)
        await v.aclose()

    asyncio.run(main())


def test_revocation_reaches_every_replica_at_once_through_redis(tmp_path, redis_url):
    url = str(tmp_path / "k.db")
    store = KeyStore(connect(url))
    record, token = store.create(user="alice")
    cfg = AuthConfig(redis_prefix=f"margin-test-{uuid.uuid4().hex[:8]}:")
    a, b = KeyVerifier(url, cfg, redis_url), KeyVerifier(url, cfg, redis_url)

    async def main() -> None:
        await a.start()
        await b.start()
        assert (await a.verify(token)).id == record.id
        assert (await b.verify(token)).id == record.id
        await a.run_db(lambda s: s.revoke(record.id))
        await a.changed(record.id)
        for v in (a, b):  # no waiting: the very next request is refused on both
            with pytest.raises(AuthenticationError, match="revoked"):
                await v.verify(token)
        await a.aclose()
        await b.aclose()

    asyncio.run(main())


def test_roles_are_kept_changed_and_checked_and_old_keys_become_users(db_url):
    from margin.metering.migrations import MIGRATIONS, migrate

    db = connect(db_url)
    # A database from before roles existed, with a key in it.
    migrate(db, {v: steps for v, steps in MIGRATIONS.items() if v < 10})
    old = KeyStore(db, run_migrations=False)
    db.execute("INSERT INTO api_keys (id, secret_hash, user_id, created_at, updated_at) "
               "VALUES (?, ?, ?, ?, ?)", ("00000000000000aa", hash_secret("s" * 43), "old",
                                          1.0, 1.0))
    db.commit()
    store = KeyStore(db)  # migrates: the role column appears, empty
    assert store.get("00000000000000aa").role == "user"
    viewer, _ = store.create(user="finance", role="viewer")
    assert store.get(viewer.id).role == "viewer" and viewer.public()["role"] == "viewer"
    assert store.update(viewer.id, {"role": "admin"}).role == "admin"
    assert store.update(viewer.id, {"role": None}).role == "user"  # cleared: a plain key
    with pytest.raises(InputError, match="role must be one of"):
        store.create(user="x", role="root")
    with pytest.raises(InputError, match="role must be one of"):
        store.update(viewer.id, {"role": "superuser"})
