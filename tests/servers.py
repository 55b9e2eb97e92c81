"""REAL broker servers for tests: re-exports ``deploy.local_servers`` (``RedisServer``,
``TansuServer``, ``free_port``, ...) and adds pytest fixtures (``redis_server``,
``redis_aof_server``, ``tansu_server``, ``tansu_server_fresh``). Test modules import the fixtures
explicitly (``from servers import ...``); it also works as a plugin (``pytest_plugins =
["servers"]`` with ``tests/`` on sys.path).

Missing binaries are a FAILURE, never a skip: run ``scripts/ensure_servers.sh`` (``make test``
does).
"""
from __future__ import annotations

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from deploy.local_servers import (  # noqa: E402,F401  (re-exported)
    ENSURE_HINT, RedisServer, ServerFailed, ServerMissing, ServerProcess, TansuServer, free_port,
    is_local_url, redis_server_binary, start_local, tansu_binary,
)

# ---------------------------------------------------------------------- pytest fixtures
try:
    import pytest
except ImportError:  # helpers only (benchmarks)
    pytest = None

if pytest is not None:
    def _start_or_fail(make):
        try:
            server = make()
        except ServerMissing as exc:
            pytest.fail(str(exc), pytrace=False)
        try:
            return server.start()
        except ServerFailed as exc:
            pytest.fail(str(exc), pytrace=False)

    @pytest.fixture(scope="session")
    def redis_server(tmp_path_factory):
        """A session-wide redis-server without persistence."""
        server = _start_or_fail(lambda: RedisServer(tmp_path_factory.mktemp("redis")))
        yield server
        server.stop()

    @pytest.fixture
    def redis_aof_server(tmp_path):
        """A fresh redis-server with AOF on (for stop/restart tests)."""
        server = _start_or_fail(lambda: RedisServer(tmp_path / "redis-aof", appendonly=True))
        yield server
        server.stop()

    @pytest.fixture(scope="session")
    def tansu_server(tmp_path_factory):
        """A session-wide tansu Kafka-protocol broker (memory storage)."""
        server = _start_or_fail(lambda: TansuServer(tmp_path_factory.mktemp("tansu")))
        yield server
        server.stop()

    @pytest.fixture
    def tansu_server_fresh(tmp_path):
        """A tansu broker of its own (for stop/restart tests)."""
        server = _start_or_fail(lambda: TansuServer(tmp_path / "tansu"))
        yield server
        server.stop()
