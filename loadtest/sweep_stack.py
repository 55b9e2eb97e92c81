"""The stack a sweep runs (``deploy.stack.Stack``) built from its options, and what it records
about it in config.json.

* ``--server triton``: a ``ManagedTriton`` (repository for the gateway's models, trace on);
  the gateway and workers get ``--backend triton --triton-url ...``.
* ``--broker redis://local`` / ``kafka://local``: a redis-server / tansu on a free loopback port
  (log in RUN_DIR/logs); other URLs are used as given.
* the gateway: ``--gateway-command`` on a free loopback port, spans into RUN_DIR/spans.
* ``--worker-processes N``: N ``python -m pipelines.worker`` (the gateway with ``--workers 0``).
"""
from __future__ import annotations

import shlex
import sys
import time

from deploy.pipeline_processes import GatewayProcess, WorkerProcess
from deploy.probes import http_ok
from deploy.processes import ProcessFailed
from deploy.stack import Stack
from loadtest.errors import SweepError


def _say(msg: str) -> None:
    print(f"sweep: {msg}", file=sys.stderr, flush=True)


def triton_server(args, run):
    """``--server triton``: the server piece; the gateway arguments grow by its URL."""
    from deploy.triton.sweep_server import ManagedTriton

    try:
        server = ManagedTriton.for_gateway(run.path, args.gateway_args,
                                           protocol=args.triton_protocol,
                                           max_batch=args.triton_max_batch,
                                           queue_delay_us=args.triton_queue_delay_us,
                                           instances=args.triton_instances)
    except ProcessFailed as exc:
        raise SweepError(f"could not start tritonserver: {exc}") from None
    args.gateway_args = [*args.gateway_args, *server.gateway_args()]
    return server


def broker_server(args, run, config: dict):
    """``(server or None, broker URL, gateway broker arguments)`` for ``--broker``."""
    from brokers.redis_streams import redact_url
    from deploy.local_servers import ServerMissing, is_local_url, local_server

    if not args.broker:
        return None, None, []
    url, server = args.broker, None
    config["broker"] = {"requested": url}
    if is_local_url(url):
        try:
            server, url = local_server(url, run.logs)
        except ServerMissing as exc:
            raise SweepError(f"could not start the local broker for {args.broker}: {exc}") from None
    gw_url = _with_query(url, lag_groups="classifiers") if url.startswith("kafka") else url
    config["broker"].update(url=redact_url(url), gateway_url=redact_url(gw_url))
    return server, url, ["--broker", gw_url]


def _with_query(url: str, **opts) -> str:
    """``url`` with ``opts`` added to its query string unless already there."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    q = dict(parse_qsl(parts.query, keep_blank_values=True))
    for k, v in opts.items():
        q.setdefault(k, str(v))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(q), parts.fragment))


def build_stack(args, run, config: dict, worker_options) -> Stack:
    """The pieces, ports chosen, nothing started (``worker_options(gateway_args)``: the
    classifier options of the gateway as worker arguments)."""
    server = triton_server(args, run) if args.server == "triton" else None
    broker, url, broker_args = broker_server(args, run, config)
    n = args.worker_processes
    config["workers"] = {"processes": n, "in_gateway": None if n == 0 else 0}
    workers = []
    if n:
        wargs = [*worker_options(args.gateway_args), *args.worker_arg]
        workers = [WorkerProcess(url, wargs, run.logs / f"worker-{i}.log", name=f"worker-{i}",
                                 consumer=f"sweep-worker-{i}") for i in range(n)]
        broker_args += ["--workers", "0"]
    gateway = GatewayProcess(["--spans-dir", str(run.spans_parts.resolve()), *args.gateway_args,
                              *broker_args], run.logs / "gateway.log",
                             command=shlex.split(args.gateway_command),
                             stop_timeout_s=args.stop_timeout)
    return Stack(server=server, broker=broker, gateway=gateway, workers=workers, say=_say)


def describe_stack(stack: Stack, config: dict) -> None:
    """What started, for config.json (and a line each on stderr)."""
    gw = stack.gateway
    config["gateway_command"] = gw.argv
    config["gateway_process"] = {"pid": gw.pid}
    if stack.server is not None:
        config["serving"] = stack.server.info
        _say(f"started tritonserver (pid {stack.server.pid}) at {stack.server.url}")
    b = stack.broker
    if b is not None:
        config["broker"].update(local=True, pid=b.pid, server=b.name, log=str(b.log_path))
        _say(f"started {b.name} (pid {b.pid}) at {b.url}")
    if stack.workers:
        config["workers"].update(command=[w.argv for w in stack.workers],
                                 pids=[w.pid for w in stack.workers])
        _say(f"{len(stack.workers)} worker process(es) consuming from "
             f"{config['broker']['url']}")
    _say(f"the gateway runs (pid {gw.pid}, log {gw.log_path})")


def stop_stack(stack: Stack | None, config: dict) -> None:
    """Stop workers, gateway, broker, server (in that order, by PID) and record how."""
    if stack is None or not stack.started:
        return
    codes = stack.stop()
    gw = stack.gateway
    # uvicorn re-raises SIGTERM after a graceful shutdown: exit code -15 is normal here
    config.setdefault("gateway_process", {}).update(exit_code=codes.get(gw.name),
                                                    stopped_by=gw.stopped_by)
    if stack.broker is not None:
        config.setdefault("broker", {})["stopped"] = True


def join_serving(stack: Stack | None, run, config: dict) -> None:
    """``--server triton``, after the server stopped (it wrote its trace) and spans.parquet is
    merged: Triton's clocks into the spans, the stats cross-check into config.json."""
    from overhead.contract.runconfig import write_config

    if stack is None or stack.server is None:
        return
    config["serving"] = stack.server.join(run.path)
    write_config(run.path, config)
    cc = config["serving"].get("cross_check")
    if cc:
        from analysis.report.render import cross_check_text
        print(cross_check_text(cc), file=sys.stderr)


def wait_ready(url: str, timeout: float) -> None:
    """A gateway someone else started (``--host``): wait for ``GET /healthz`` -> 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_ok(url + "/healthz", 2.0):
            return
        time.sleep(0.2)
    raise SweepError(f"{url}/healthz not ready after {timeout:.0f} s")
