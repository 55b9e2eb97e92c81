"""Run the Compose topology WITHOUT Docker, from local binaries, on loopback ports.

    python -m deploy.local [--server triton|embedded] [--broker redis|kafka|memory] [--workers N]
                           [--run-dir DIR] [--free-ports] [--startup-timeout S] [-- GATEWAY ARGS]
    overhead up ...                           # the same

Starts (in this order) the inference server (``tritonserver`` from ``.venv-triton`` serving a
generated Python-backend repository, ``deploy/triton/server.py``; none for ``embedded``), the broker
(``redis-server`` with AOF, or ``tansu`` for Kafka, ``deploy/local_servers.py``; none for
``memory``), the gateway (``python -m pipelines.gateway`` on 127.0.0.1) and N classifier worker
processes (``python -m pipelines.worker``; with ``memory`` they are N threads in the gateway).
Ports default to ``deploy.services.LOCAL_PORTS`` (a free port when taken). This module is only
the CLI: the pieces run in one ``deploy.stack.Stack``, which starts each and probes it ready
(Triton ``/v2/health/ready``, Redis ``PING``, a Kafka Metadata request, the gateway's
``/healthz``, a worker's connection to its broker) before the next. Then it prints a table of what is on which port, writes ``RUN_DIR/stack.json`` (names, PIDs,
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
import sys
import time
from pathlib import Path

from deploy.processes import free_port, log_tail, port_free
from deploy.services import LOCAL_PORTS, MODELS
from deploy.stack import Stack

ROOT = Path(__file__).resolve().parents[1]


class _Stop(Exception):
    """Raised by the signal handler to leave start-up or the wait loop."""


def pick_port(name: str, free: bool, taken: set[int]) -> int:
    want = LOCAL_PORTS.get(name)
    if not free and want and want not in taken and port_free(want):
        port = want
    else:
        port = free_port()
        while port in taken:
            port = free_port()
    taken.add(port)
    return port


def build_stack(server: str, broker: str, workers: int, run_dir: Path, free_ports: bool,
                gateway_args: list[str]) -> Stack:
    """The pieces ``overhead up`` runs, ports chosen (defaults unless taken or ``free_ports``)."""
    from deploy.pipeline_processes import GatewayProcess, WorkerProcess

    taken: set[int] = set()
    logs = run_dir / "logs"
    env = dict(os.environ)
    gw_args = []
    srv = None
    if server == "triton":
        from deploy.triton.sweep_server import ManagedTriton

        det, cls = MODELS
        srv = ManagedTriton(run_dir, det, cls, trace=False, repo=run_dir / "triton-repo",
                            log_path=logs / "triton.log", name="triton",
                            http_port=pick_port("triton-http", free_ports, taken),
                            grpc_port=pick_port("triton-grpc", free_ports, taken))
        gw_args += srv.gateway_args()
    brk, broker_url = None, "memory://"
    if broker in ("redis", "kafka"):
        from deploy.local_servers import RedisServer, TansuServer

        port = pick_port(broker, free_ports, taken)
        brk = (RedisServer(run_dir / broker, port=port, appendonly=True) if broker == "redis"
               else TansuServer(run_dir / broker, port=port))
        brk.name, broker_url = broker, brk.url
    external = brk is not None
    gw_args += ["--broker", broker_url, "--workers", str(0 if external else max(1, workers)),
                "--spans-dir", str(run_dir / "spans"), *gateway_args]
    from overhead.config import GatewaySettings, worker_argv

    wk_args = worker_argv(GatewaySettings.from_args(gw_args, known_only=True))
    gateway = GatewayProcess(gw_args, logs / "gateway.log", env=env,
                             port=pick_port("gateway", free_ports, taken))
    wks = [WorkerProcess(broker_url, wk_args, logs / f"worker-{i}.log", name=f"worker-{i}",
                         consumer=f"local-worker-{i}", env=env)
           for i in range(workers if external else 0)]
    return Stack(server=srv, broker=brk, gateway=gateway, workers=wks)


def describe(stack: Stack, args, run_dir: Path) -> dict:
    return {"server": args.server, "broker": args.broker, "workers": args.workers,
            "gateway_url": stack.gateway.url, "launcher_pid": os.getpid(),
            "services": stack.describe()}


def table(stack: Stack, run_dir: Path) -> str:
    rows = [("service", "pid", "port (127.0.0.1)", "url", "log")]
    for s in stack.describe():
        rows.append((s["name"], str(s["pid"]), str(s["port"] or "-"), s["url"] or "-",
                     os.path.relpath(s["log"], run_dir)))
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows)


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
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)

    def on_signal(signum, frame):
        raise _Stop(signal.Signals(signum).name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    rc, stack = 0, None
    try:
        stack = build_stack(args.server, args.broker, args.workers, run_dir, args.free_ports,
                            args.gateway_args)
        stack.start(args.startup_timeout)
        (run_dir / "stack.json").write_text(json.dumps(describe(stack, args, run_dir), indent=2))
        print(table(stack, run_dir), flush=True)
        print(f"READY {stack.gateway.url}  (run dir {run_dir}; Ctrl-C stops everything)", flush=True)
        rc = _wait(stack)
    except _Stop as exc:
        _say(f"{exc}: stopping ...")
    except Exception as exc:
        _say(f"start-up failed: {exc}")
        rc = 1
    finally:
        for s in old:                 # a second signal must not interrupt the clean stop
            signal.signal(s, signal.SIG_IGN)
        if stack is not None:
            stack.stop()
        for s, h in old.items():
            signal.signal(s, h)
        _say("stopped")
    return rc


def _wait(stack: Stack) -> int:
    """Until a signal, or until a piece of the stack dies (then 1)."""
    while True:
        time.sleep(0.5)
        dead = stack.dead()
        if dead:
            _say(f"{dead[0].name} exited; log {dead[0].log_path}:\n{log_tail(dead[0].log_path, 1500)}")
            return 1


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
