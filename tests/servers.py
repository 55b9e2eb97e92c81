"""REAL broker servers for tests: re-exports ``deploy.local_servers`` (``RedisServer``,
``TansuServer``, ``free_port``, ...) and adds pytest fixtures (``redis_server``,
``redis_aof_server``, ``tansu_server``, ``tansu_server_fresh``), each a one-piece
``deploy.stack.Stack``. Test modules import the fixtures
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
from deploy.stack import Stack  # noqa: E402

# ---------------------------------------------------------------------- pytest fixtures
try:
    import pytest
except ImportError:  # helpers only (benchmarks)
    pytest = None

if pytest is not None:
    def _serve(make) -> Stack:
        """A started ``deploy.stack.Stack`` holding one broker server (a failure, never a skip,
        when it is missing or does not start)."""
        try:
            return Stack(broker=make(), say=lambda msg: None).start(15)
        except (ServerMissing, ServerFailed) as exc:
            pytest.fail(str(exc), pytrace=False)

    @pytest.fixture(scope="session")
    def redis_server(tmp_path_factory):
        """A session-wide redis-server without persistence."""
        with _serve(lambda: RedisServer(tmp_path_factory.mktemp("redis"))) as stack:
            yield stack.broker

    @pytest.fixture
    def redis_aof_server(tmp_path):
        """A fresh redis-server with AOF on (for stop/restart tests)."""
        with _serve(lambda: RedisServer(tmp_path / "redis-aof", appendonly=True)) as stack:
            yield stack.broker

    @pytest.fixture(scope="session")
    def tansu_server(tmp_path_factory):
        """A session-wide tansu Kafka-protocol broker (memory storage)."""
        with _serve(lambda: TansuServer(tmp_path_factory.mktemp("tansu"))) as stack:
            yield stack.broker

    @pytest.fixture
    def tansu_server_fresh(tmp_path):
        """A tansu broker of its own (for stop/restart tests)."""
        with _serve(lambda: TansuServer(tmp_path / "tansu")) as stack:
            yield stack.broker
