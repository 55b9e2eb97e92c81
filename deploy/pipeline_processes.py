"""The pipeline's own processes as ``ManagedProcess`` specs: the gateway and a classifier worker.

    GatewayProcess(["--detector", "ssd_mobilenetv2", ...], log_path).start()   # free port
        .url, .port, .pid                 ready: GET /healthz -> 200 (models loaded)
    WorkerProcess(broker_url, ["--classifier", "mobilenetv2", ...], log_path, name="w0").start()
        ready: the worker holds a connection to its broker (it opens it after loading its model)

Both take ``prefix`` (``deploy.processes.ManagedProcess``: e.g. ``ip netns exec NS``, a host of
its own; the gateway then binds the namespace's address, given as ``host``, on an explicit port).

Stop (both): SIGTERM to the PID (the gateway flushes its spans, a worker finishes its batch),
SIGKILL after the timeout, then the process group.
"""
from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit

from deploy.probes import connected_to, http_ok
from deploy.processes import ManagedProcess, free_port


class GatewayProcess(ManagedProcess):
    """``python -m pipelines.gateway --host H --port P ARGS``."""

    def __init__(self, args: list[str], log_path: str | os.PathLike, host: str = "127.0.0.1",
                 port: int | None = None, python: str = sys.executable, env: dict | None = None,
                 command: list[str] | None = None, name: str = "gateway",
                 stop_timeout_s: float = 15.0, prefix: list[str] | None = None):
        self.host, self.port = host, port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        cmd = command or [python, "-m", "pipelines.gateway"]
        super().__init__(name, [*cmd, "--host", host, "--port", str(self.port), *args],
                         log_path, env=env, stop_timeout_s=stop_timeout_s, prefix=prefix)

    def ready(self) -> bool:
        return http_ok(self.url + "/healthz")

    def start(self, timeout_s: float = 300.0) -> "GatewayProcess":
        return super().start(timeout_s)


def broker_port(url: str) -> int:
    """The TCP port of a ``redis://`` / ``kafka://`` broker URL (the first bootstrap server)."""
    netloc = urlsplit(url).netloc.rsplit("@", 1)[-1].split(",")[0]
    default = 6379 if url.startswith("redis") else 9092
    return int(netloc.rsplit(":", 1)[1]) if ":" in netloc else default


class WorkerProcess(ManagedProcess):
    """``python -m pipelines.worker --broker URL --name CONSUMER ARGS`` (``name`` labels the process)."""

    def __init__(self, broker_url: str, args: list[str], log_path: str | os.PathLike,
                 name: str = "worker", consumer: str | None = None, python: str = sys.executable,
                 env: dict | None = None, stop_timeout_s: float = 10.0,
                 prefix: list[str] | None = None):
        self.broker_url = broker_url
        self.port = None
        super().__init__(name, [python, "-m", "pipelines.worker", "--broker", broker_url,
                                "--name", consumer or name, *args], log_path, env=env,
                         stop_timeout_s=stop_timeout_s, prefix=prefix)

    def ready(self) -> bool:
        return connected_to(self.pid, broker_port(self.broker_url))

    def start(self, timeout_s: float = 180.0) -> "WorkerProcess":
        return super().start(timeout_s)
