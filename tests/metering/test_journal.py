"""The ledger journal: rows outlive a SIGKILL of the writer's process, replay is idempotent,
a live process's segments are left alone, and a torn line is kept aside."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import orjson

from margin.config import LedgerConfig
from margin.metering.db import connect
from margin.metering.journal import Journal
from margin.metering.ledger import LedgerWriter

REPO = Path(__file__).resolve().parents[2]


def _row(i: int) -> dict:
    return {"id": uuid.uuid4().hex, "ts": 1_700_000_000 + i, "endpoint": "chat", "status": 200,
            "prompt_tokens": i, "completion_tokens": 1, "cost_usd": 0.001, "cache": "miss"}


def _ids(url: str) -> list[str]:
    db = connect(url)
    try:
        return [r[0] for r in db.query("SELECT id FROM requests")]
    finally:
        db.close()


# A process that queues rows (the writer would flush them only after a minute), reports
# them, then waits to be killed.
_WRITER = textwrap.dedent("""
    import sys, time, uuid, orjson
    from margin.config import LedgerConfig
    from margin.metering.ledger import LedgerWriter
    w = LedgerWriter(LedgerConfig(url=sys.argv[1], flush_interval_ms=60_000,
                                  batch_size=100_000, journal_fsync=sys.argv[3]))
    w.start()
    ids = []
    for i in range(int(sys.argv[2])):
        row = {"id": uuid.uuid4().hex, "ts": 1_700_000_000 + i, "endpoint": "chat",
               "status": 200}
        w.submit(row)
        ids.append(row["id"])
    sys.stdout.write(orjson.dumps(ids).decode() + "\\n")
    sys.stdout.flush()
    time.sleep(600)
""")


def _writer_process(url: str, n: int, fsync: str = "never") -> tuple[subprocess.Popen, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get(
        "PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, url, str(n), fsync],
                            stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    ids = orjson.loads(proc.stdout.readline())
    return proc, ids


def test_rows_queued_in_a_killed_process_are_replayed_at_the_next_start(tmp_path):
    url = str(tmp_path / "l.db")
    proc, ids = _writer_process(url, 300)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert not Path(url).exists() or _ids(url) == []  # nothing reached the database

    w = LedgerWriter(LedgerConfig(url=url))
    w.start()
    w.close()
    assert sorted(_ids(url)) == sorted(ids)
    assert w.counters.replayed == 300
    # The segment is gone once replayed: a second start adds nothing.
    w2 = LedgerWriter(LedgerConfig(url=url))
    w2.start()
    w2.close()
    assert len(_ids(url)) == 300 and w2.counters.replayed == 0
    assert list(Path(url + ".journal").iterdir()) == []


def test_fsync_always_still_replays(tmp_path):
    url = str(tmp_path / "l.db")
    proc, ids = _writer_process(url, 50, "always")
    proc.kill()
    proc.wait(10)
    w = LedgerWriter(LedgerConfig(url=url))
    w.start()
    w.close()
    assert sorted(_ids(url)) == sorted(ids)


def test_a_live_process_keeps_its_segment(tmp_path):
    url = str(tmp_path / "l.db")
    proc, ids = _writer_process(url, 20)
    try:
        w = LedgerWriter(LedgerConfig(url=url))
        w.start()
        w.close()
        assert _ids(url) == [] and w.counters.replayed == 0
        segments = list(Path(url + ".journal").glob("*.jsonl"))
        assert [s.name.split("-")[0] for s in segments] == [str(proc.pid)]
    finally:
        proc.kill()
        proc.wait(10)


def test_replay_is_idempotent_on_the_request_id(tmp_path):
    url = str(tmp_path / "l.db")
    rows = [_row(i) for i in range(10)]
    w = LedgerWriter(LedgerConfig(url=url))
    w.start()
    for r in rows[:6]:
        w.submit(r)
    w.close()
    # A dead process's segment holding rows already written and rows not yet written.
    journal = Path(url + ".journal")
    (journal / "999999-1.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    w = LedgerWriter(LedgerConfig(url=url))
    w.start()
    w.close()
    assert sorted(_ids(url)) == sorted(r["id"] for r in rows)


def test_a_torn_line_is_kept_aside_and_the_rest_replayed(tmp_path):
    url = str(tmp_path / "l.db")
    journal = tmp_path / "j"
    journal.mkdir()
    rows = [_row(i) for i in range(3)]
    torn = orjson.dumps(_row(9))[:20]
    (journal / "999999-1.jsonl").write_bytes(
        b"".join(orjson.dumps(r) + b"\n" for r in rows) + torn)
    w = LedgerWriter(LedgerConfig(url=url, journal_path=str(journal)))
    w.start()
    w.close()
    assert sorted(_ids(url)) == sorted(r["id"] for r in rows)
    assert Path(url + ".spool.bad").read_bytes() == torn + b"\n"


def test_segments_are_retired_once_written_and_none_left_after_close(tmp_path):
    url = str(tmp_path / "l.db")
    w = LedgerWriter(LedgerConfig(url=url, flush_interval_ms=10))
    w.start()
    journal = Path(url + ".journal")
    for i in range(5):
        w.submit(_row(i))
    import time

    deadline = time.monotonic() + 5
    while w.counters.written < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    # Only the open segment is left, and it is empty.
    assert [p.stat().st_size for p in journal.glob("*.jsonl")] == [0]
    w.close()
    assert list(journal.iterdir()) == []
    assert len(_ids(url)) == 5


def test_journal_off_writes_no_files(tmp_path):
    url = str(tmp_path / "l.db")
    w = LedgerWriter(LedgerConfig(url=url, journal=False))
    w.start()
    w.submit(_row(0))
    w.close()
    assert not Path(url + ".journal").exists() and len(_ids(url)) == 1


def test_seal_takes_only_segments_with_rows(tmp_path):
    j = Journal(tmp_path / "j")
    j.open()
    queued: list[dict] = []
    assert j.seal() is False
    j.append({"id": "a"}, queued.append)
    assert queued == [{"id": "a"}]
    assert j.seal() is True
    assert j.retire() == 1
    assert j.seal() is False
    j.close()
    assert list((tmp_path / "j").iterdir()) == []


def test_a_restarted_process_with_the_same_pid_does_not_overwrite_its_predecessor(tmp_path):
    # Containers restart a killed gateway as the same pid: its new segment must not take
    # the name of the segment it is about to replay.
    url = str(tmp_path / "l.db")
    journal = Path(url + ".journal")
    journal.mkdir()
    rows = [_row(i) for i in range(4)]
    pid = os.getpid()
    (journal / f"{pid}-1.jsonl").write_bytes(  # the name it once would have reused
        b"".join(orjson.dumps(r) + b"\n" for r in rows))
    (journal / f"{pid}-deadbeef-2.jsonl.new").write_bytes(b"")
    w = LedgerWriter(LedgerConfig(url=url))
    w.start()
    w.close()
    assert sorted(_ids(url)) == sorted(r["id"] for r in rows)
    assert list(journal.iterdir()) == []
