from margin.auth.sessions import SessionStore, csrf_ok


def test_session_found_until_it_expires_then_gone():
    store = SessionStore(ttl_s=60)
    new = store.create(now=1000.0)
    assert store.get(new.session_id, now=1059.0) == new.session
    assert store.get(new.session_id, now=1060.0) is None
    assert store.get(new.session_id, now=1001.0) is None  # dropped, not resurrected


def test_store_keeps_only_hashes_of_session_ids():
    store = SessionStore(ttl_s=60)
    new = store.create(now=0.0)
    assert new.session_id not in store._by_digest
    assert all(new.session_id not in k for k in store._by_digest)


def test_unknown_or_revoked_session_is_refused():
    store = SessionStore(ttl_s=60)
    new = store.create(now=0.0)
    assert store.get("not-a-session", now=1.0) is None
    assert store.get(None, now=1.0) is None
    store.revoke(new.session_id)
    assert store.get(new.session_id, now=1.0) is None


def test_csrf_token_must_match_this_session():
    store = SessionStore(ttl_s=60)
    a, b = store.create(now=0.0), store.create(now=0.0)
    assert a.session.csrf_token != b.session.csrf_token
    assert csrf_ok(a.session, a.session.csrf_token)
    assert not csrf_ok(a.session, b.session.csrf_token)
    assert not csrf_ok(a.session, None)
    assert not csrf_ok(a.session, "")
