"""Run the Compose topology WITHOUT Docker, from local binaries, on loopback ports.

    python -m deploy.local [--server triton|embedded] [--broker redis|kafka|memory] [--workers N]
                           [--run-dir DIR] [--free-ports] [--startup-timeout S] [-- GATEWAY ARGS]
    overhead up ...                           # the same

Starts (in this order) the inference server (``tritonserver`` from ``.venv-triton`` serving a
generated Python-backend repository, ``deploy/triton/server.py``; none for ``embedded``), the broker
(``redis-server`` with AOF, or ``tansu`` for Kafka, ``deploy/local_servers.py``; none for
``memory``), the gateway (``python -m pipelines.gateway`` on 127.0.0.1) and N classifier worker
processes (``python -m pipelines.worker``; with ``memory`` they are N threads in the gateway).
Ports default to ``deploy.services.LOCAL_PORTS`` (a free port when taken). It waits for each one to
be ready, prints a table of what is on which port, writes ``RUN_DIR/stack.json`` (names, PIDs,
process groups, ports, logs; logs in ``RUN_DIR/logs/``) and a line ``READY <gateway url>``, then
runs until Ctrl-C / SIGTERM, or until a process of the stack dies. Stop: every process was started
in its own session (process group = its PID); each is sent SIGTERM by PID, waited for, then its
group is SIGKILLed, in reverse start order, so nothing is left behind.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from deploy.processes import stop_process
from deploy.services import LOCAL_PORTS, MODELS

ROOT = Path(__file__).resolve().parents[1]


class _Stop(Exception):
    """Raised by the signal handler to leave start-up or the wait loop."""


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def pick_port(name: str, free: bool, taken: set[int]) -> int:
    from deploy.local_servers import free_port

    want = LOCAL_PORTS.get(name)
    if not free and want and want not in taken and _port_free(want):
        port = want
    else:
        port = free_port()
        while port in taken:
            port = free_port()
    taken.add(port)
    return port


class Child:
    """A Python child process in its own session, logging to a file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict | None = None,
                 port: int | None = None, url: str | None = None):
        self.name, self.argv, self.log, self.port, self.url = name, argv, log, port, url
        self.env = env
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self) -> "Child":
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(self.argv, stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=ROOT, env=self.env,
                                         start_new_session=True)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        proc = self.proc
        if proc is None:
            return
        stop_process(proc, timeout_s)


class _Wrapped:
    """A TritonServer / ServerProcess seen as a Child (name, pid, port, url, log, stop)."""

    def __init__(self, name, server, port, url, log):
        self.name, self.server, self.port, self.url, self.log = name, server, port, url, log

    @property
    def pid(self):
        return self.server.pid

    def running(self) -> bool:
        return self.server.running()

    def stop(self, timeout_s: float = 10.0) -> None:
        pid = self.server.pid
        self.server.stop()
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Stack:
    def __init__(self, server: str, broker: str, workers: int, run_dir: Path, free_ports: bool,
                 gateway_args: list[str], startup_timeout_s: float = 180.0):
        self.server, self.broker, self.workers = server, broker, workers
        self.run_dir, self.free_ports = run_dir, free_ports
        self.gateway_args = gateway_args
        self.timeout = startup_timeout_s
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.members: list = []
        self.taken: set[int] = set()
        self.gateway_url = None

    def say(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def start(self) -> None:
        env = dict(os.environ)
        gw = [sys.executable, "-m", "pipelines.gateway", "--host", "127.0.0.1"]
        if self.server == "triton":
            from deploy.triton.repository import write_repository
            from deploy.triton.server import TritonServer
            from pipelines.models import ensure_model

            repo = self.run_dir / "triton-repo"
            self.say(f"triton: writing the repository {repo} ...")
            write_repository(repo, [ensure_model(m) for m in MODELS], flavour="python",
                             max_batch=8, queue_delay_us=100, instances=1, intra_op_threads=1)
            hp, gp = pick_port("triton-http", self.free_ports, self.taken), \
                pick_port("triton-grpc", self.free_ports, self.taken)
            log = self.logs / "triton.log"
            ts = TritonServer(repo, http_port=hp, grpc_port=gp, log_path=log, threads=1)
            self.say("triton: starting tritonserver ...")
            ts.start(timeout_s=self.timeout)
            url = f"grpc://127.0.0.1:{gp}"
            self.members.append(_Wrapped("triton", ts, f"{hp} http, {gp} grpc", url, log))
            gw += ["--backend", "triton", "--triton-url", url]
        broker_url = "memory://"
        if self.broker in ("redis", "kafka"):
            from deploy.local_servers import RedisServer, TansuServer

            p = pick_port(self.broker, self.free_ports, self.taken)
            wd = self.run_dir / self.broker
            srv = (RedisServer(wd, port=p, appendonly=True) if self.broker == "redis"
                   else TansuServer(wd, port=p))
            self.say(f"{self.broker}: starting ...")
            srv.start(timeout_s=30)
            broker_url = srv.url
            self.members.append(_Wrapped(self.broker, srv, p, broker_url, srv.log_path))
        external = self.broker != "memory"
        gp = pick_port("gateway", self.free_ports, self.taken)
        self.gateway_url = f"http://127.0.0.1:{gp}"
        gw += ["--port", str(gp), "--broker", broker_url,
               "--workers", str(0 if external else max(1, self.workers)),
               "--spans-dir", str(self.run_dir / "spans"), *self.gateway_args]
        gateway = Child("gateway", gw, self.logs / "gateway.log", env, gp, self.gateway_url)
        self.members.append(gateway.start())
        if external:
            from overhead.config import GatewaySettings, worker_argv

            wk = worker_argv(GatewaySettings.from_args(gw[3:], known_only=True))
            for i in range(self.workers):
                argv = [sys.executable, "-m", "pipelines.worker", "--broker", broker_url, *wk,
                        "--name", f"local-worker-{i}"]
                self.members.append(Child(f"worker-{i}", argv, self.logs / f"worker-{i}.log",
                                          env).start())
        self.say("gateway: waiting for /healthz ...")
        deadline = time.monotonic() + self.timeout
        while not _http_ok(self.gateway_url + "/healthz"):
            dead = [m for m in self.members if not m.running()]
            if dead:
                raise RuntimeError(f"{dead[0].name} exited during start-up; log {dead[0].log}:\n"
                                   + _tail(dead[0].log))
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway not ready after {self.timeout:g} s; log "
                                   f"{gateway.log}:\n" + _tail(gateway.log))
            time.sleep(0.2)

    def describe(self) -> dict:
        return {"server": self.server, "broker": self.broker, "workers": self.workers,
                "gateway_url": self.gateway_url, "launcher_pid": os.getpid(),
                "services": [{"name": m.name, "pid": m.pid, "pgid": m.pid, "port": m.port,
                              "url": m.url, "log": str(m.log)} for m in self.members]}

    def table(self) -> str:
        rows = [("service", "pid", "port (127.0.0.1)", "url", "log")]
        for m in self.members:
            rows.append((m.name, str(m.pid), str(m.port or "-"), m.url or "-",
                         os.path.relpath(m.log, self.run_dir)))
        w = [max(len(r[i]) for r in rows) for i in range(5)]
        return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows)

    def dead(self) -> list:
        return [m for m in self.members if not m.running()]

    def stop(self) -> None:
        for m in reversed(self.members):
            try:
                m.stop()
            except Exception as exc:         # keep stopping the others
                self.say(f"{m.name}: stop failed: {exc}")
        self.members = []


def _tail(path, n: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m deploy.local",
                                 description="The Compose topology without Docker, on loopback ports "
                                             "(Ctrl-C / SIGTERM stops everything).")
    ap.add_argument("--server", choices=("triton", "embedded"), default="triton")
    ap.add_argument("--broker", choices=("redis", "kafka", "memory"), default="redis")
    ap.add_argument("--workers", type=int, default=1,
                    help="classifier worker processes (threads in the gateway with memory)")
    ap.add_argument("--run-dir", default=None, help="default runs/up-<time>")
    ap.add_argument("--free-ports", action="store_true", help="free ports instead of the defaults")
    ap.add_argument("--startup-timeout", type=float, default=180.0)
    ap.add_argument("gateway_args", nargs="*", help="after --: extra gateway options")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir = Path(args.run_dir or ROOT / "runs" / time.strftime("up-%Y%m%d-%H%M%S")).resolve()
    stack = Stack(args.server, args.broker, args.workers, run_dir, args.free_ports,
                  args.gateway_args, args.startup_timeout)

    def on_signal(signum, frame):
        raise _Stop(signal.Signals(signum).name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    rc = 0
    try:
        stack.start()
        (run_dir / "stack.json").write_text(json.dumps(stack.describe(), indent=2))
        print(stack.table(), flush=True)
        print(f"READY {stack.gateway_url}  (run dir {run_dir}; Ctrl-C stops everything)", flush=True)
        while True:
            time.sleep(0.5)
            dead = stack.dead()
            if dead:
                stack.say(f"{dead[0].name} exited; log {dead[0].log}:\n{_tail(dead[0].log, 1500)}")
                rc = 1
                break
    except _Stop as exc:
        stack.say(f"{exc}: stopping ...")
    except Exception as exc:
        stack.say(f"start-up failed: {exc}")
        rc = 1
    finally:
        for s in old:                 # a second signal must not interrupt the clean stop
            signal.signal(s, signal.SIG_IGN)
        stack.stop()
        for s, h in old.items():
            signal.signal(s, h)
        stack.say("stopped")
    return rc


if __name__ == "__main__":
    sys.exit(main())
