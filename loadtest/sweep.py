"""Headless concurrency sweep: gateway + one Locust process + run directory + breakdown report.

    python -m loadtest.sweep --out RUN_DIR --users 1,2,4,8 --step-seconds 20 --warmup-seconds 5 \\
        [--sizes 0.1MP,1MP,8MP] [--host URL | gateway options, e.g. --k 4 or --gateway-arg=--k=4]
    python -m loadtest.sweep --out RUN_DIR --arrivals poisson --rates 2,4,8 --step-seconds 20 ...
        (open loop: target request rates instead of concurrent users)
    ... --stability-max-seconds 60   (extend an unstable step up to 60 s; --stability-window,
        --min-requests set the rule; the report judges every step with it either way)

Without ``--host`` the gateway is started here (``python -m pipelines.gateway`` on a free loopback
port, spans into RUN_DIR/spans, log in RUN_DIR/logs/gateway.log) and stopped at the end by PID
(SIGTERM, then SIGKILL of its process group after a timeout); options this runner does not know
go to the gateway. Before the steps: the inference-only ceiling (``loadtest/ceiling.py``,
ceiling.json; ``--no-ceiling``). Locust runs in its own process (``loadtest/locustfile.py``, the
stepped shape of ``loadtest/shapes.py``); its CPU and the gateway's are sampled with psutil per
step. At the end spans/ parts are merged and ``analysis/breakdown.py`` writes the report.

Brokers between the two DNNs: ``--broker memory://|redis://HOST:PORT|kafka://HOST:PORT`` is passed
to the gateway; ``--broker redis://local`` / ``kafka://local`` first starts a redis-server / tansu
on a free loopback port (``deploy/local_servers.py``, log in RUN_DIR/logs) and stops it by PID at
the end. ``--worker-processes N`` starts N ``python -m pipelines.worker`` processes (logs in
RUN_DIR/logs/worker-I.log; classifier options are taken from the gateway options) and the gateway
with ``--workers 0``. The gateway's ``GET /v1/stats`` is sampled every ``--depth-interval`` s into
RUN_DIR/broker_depth.parquet (time_ns, topic, depth); the CPU of the workers and of the local
broker server into process_cpu.parquet and config.json (``process_cpu``).

``--locust-workers N``: Locust runs as a headless master (the shape) plus N ``--worker`` processes
(logs in RUN_DIR/logs/locust-worker-I.log); the workers send their records to the master, which
writes requests.parquet; the generator's CPU is the sum of all of them.

With ``--host`` (a gateway you started), no gateway CPU is recorded and spans are collected only if
that gateway writes them to RUN_DIR/spans (``--spans-dir``); parts flushed after the merge are still
read by the report.

Every child runs in its own process group; on any exit path (error, Ctrl-C, SIGTERM) the groups
are terminated, so no orphans are left behind.
"""
from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
import urllib.error
from dataclasses import dataclass, field

from deploy.processes import ProcessFailed, log_tail
from deploy.stack import Stack
from loadtest.cpu import cpu_seconds, write_cpu_tables
from loadtest.errors import SweepError
from loadtest.faults import Fault, FaultInjector
from loadtest.locust_runner import LocustRun, locust_command
from loadtest.progress import DepthSampler, http_get_json
from loadtest.runinfo import corpus_manifest, corpus_summary, run_config
from loadtest.schedule import StepSchedule, parse_rates  # (not shapes: Locust)
from loadtest.sweep_stack import (
    build_stack, describe_stack, join_serving, stop_stack, wait_ready,
)
from overhead.contract.runconfig import write_config
from overhead.contract.rundir import (
    RunDir, merge_span_parts, read_json, read_locust_stats_csv, read_requests, read_steps,
)
from overhead.contract.stability import StabilityRule

__all__ = ["SweepError", "corpus_manifest", "main", "parse_args", "worker_options"]


# --- the sweep --------------------------------------------------------------------------------

def parse_args(argv: list[str] | None):
    from overhead.config import CeilingSettings, LoadSettings
    ap = argparse.ArgumentParser(prog="python -m loadtest.sweep", description=__doc__.split("\n\n")[0],
                                 allow_abbrev=False,  # never swallow a gateway option by its prefix
                                 epilog="Unknown options are passed to the gateway.")
    ap.add_argument("--out", required=True, help="run directory to create")
    ap.add_argument("--users", default="1,2,4,8",
                    help='concurrency steps, "1,2,4,8" or per-step seconds "1:20,2:30"')
    LoadSettings.add_arguments(ap)   # --step-seconds, --warmup-seconds, --arrivals, --rates, ...
    CeilingSettings.add_arguments(ap)   # --ceiling-seconds, --no-ceiling (loadtest/ceiling.py)
    ap.add_argument("--host", default=None, help="use a running gateway at this URL instead of starting one")
    ap.add_argument("--gateway-arg", action="append", default=[],
                    help="argument for the gateway (repeatable), e.g. --gateway-arg=--k=4")
    ap.add_argument("--gateway-command", default=f"{shlex.quote(sys.executable)} -m pipelines.gateway",
                    help="how to start the gateway (default: this Python, -m pipelines.gateway)")
    ap.add_argument("--broker", default=None,
                    help="broker between the stages: memory:// | redis://HOST:PORT | "
                         "kafka://HOST:PORT | redis://local | kafka://local (local: start a "
                         "server here); default: the gateway's own (memory://)")
    from deploy.triton.sweep_server import add_arguments as add_server_arguments
    add_server_arguments(ap)   # --server triton (and its --triton-* options)
    ap.add_argument("--worker-processes", type=int, default=0,
                    help="start N classifier worker processes (gateway --workers 0); needs a "
                         "redis:// or kafka:// broker")
    ap.add_argument("--worker-arg", action="append", default=[],
                    help="extra argument for every worker process (repeatable)")
    ap.add_argument("--depth-interval", type=float, default=1.0,
                    help="seconds between broker queue-depth samples (0: off)")
    ap.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for /healthz")
    ap.add_argument("--stop-timeout", type=float, default=30.0,
                    help="seconds to wait after SIGTERM before SIGKILL")
    ap.add_argument("--sample-interval", type=float, default=0.5, help="CPU sampling period (s)")
    ap.add_argument("--locust-workers", type=int, default=0,
                    help="distributed load: a Locust master plus N worker processes on this "
                         "machine (each keeps its records and sends them to the master at the end)")
    ap.add_argument("--fault", action="append", default=[], metavar="KIND@SECONDS",
                    help="a fault inside the measurement (repeatable): kill-worker@20s (kill -9 "
                         "worker-0, then start it again) or restart-broker@30s (the local broker); "
                         "the sweep keeps running and records it (loadtest/faults.py)")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="run the whole sweep N times into OUT/repeat-1..N and write OUT/repeats.md: "
                         "every cell as mean and 95%% confidence interval (loadtest/repeat.py)")
    ap.add_argument("--no-report", action="store_true", help="skip the breakdown report")
    ap.add_argument("--overwrite", action="store_true", help="reuse a run directory that has results")
    args, extra = ap.parse_known_args(argv)
    for settings in (LoadSettings, CeilingSettings):   # flags > OVERHEAD_* > defaults
        vars(args).update(settings.from_namespace(args).model_dump())
    if extra and args.host:
        ap.error(f"unknown options {extra} (options are passed to the gateway only without --host)")
    args.gateway_args = [*extra, *args.gateway_arg]
    if bool(args.arrivals) != bool(args.rates):
        ap.error("open loop needs both --arrivals and --rates")
    if args.host and args.server == "triton":
        ap.error("--server triton starts a server and the gateway: not with --host")
    if args.host and (args.broker or args.worker_processes):
        ap.error("--broker/--worker-processes start things: not with --host")
    if args.locust_workers < 0:
        ap.error("--locust-workers must be >= 0")
    if args.locust_workers and (args.arrivals or args.stability_max_seconds):
        ap.error("--locust-workers: open loop and --stability-max-seconds need the records in the "
                 "process that runs the shape; use one Locust process for them")
    try:
        args.faults = [Fault.parse(f) for f in args.fault]
    except ValueError as exc:
        ap.error(str(exc))
    if args.faults and args.host:
        ap.error("--fault acts on the pieces the sweep starts: not with --host")
    if args.worker_processes < 0:
        ap.error("--worker-processes must be >= 0")
    if args.worker_processes and (args.broker or "memory://").startswith("memory"):
        ap.error("--worker-processes needs a broker outside the gateway: --broker redis://local, "
                 "kafka://local, redis://HOST:PORT or kafka://HOST:PORT (memory:// lives inside "
                 "the gateway process)")
    return args


def worker_options(gateway_args: list[str]) -> list[str]:
    """The classifier options of the gateway, as ``pipelines.worker`` arguments."""
    from overhead.config import GatewaySettings, worker_argv

    return worker_argv(GatewaySettings.from_args(gateway_args, known_only=True))


@dataclass
class Sweep:
    args: argparse.Namespace
    argv: list[str]
    run: RunDir = None
    schedule: StepSchedule = None
    stack: Stack | None = None        # server -> broker -> gateway -> workers (not with --host)
    locust: LocustRun | None = None
    depth: DepthSampler | None = None
    proc_samples: list = field(default_factory=list)
    corpus: list = field(default_factory=list)       # corpus.json entries
    samples: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    faults: FaultInjector | None = None

    def __post_init__(self):
        a = self.args
        self.run = RunDir(a.out)
        try:
            self.rates = parse_rates(a.rates) if a.arrivals else None
            users = ",".join("1" for _ in self.rates) if self.rates else a.users
            self.schedule = StepSchedule.parse(users, a.step_seconds, a.warmup_seconds)
            self.rule = StabilityRule(window_s=a.stability_window, min_requests=a.min_requests)
        except ValueError as exc:
            raise SweepError(f"bad --users/--rates/--step-seconds/--warmup-seconds/stability "
                             f"options: {exc}") from None
        self.sizes = [s.strip() for s in a.sizes.split(",") if s.strip()]

    @property
    def gateway(self):
        return self.stack.gateway if self.stack else None

    # each phase is a method, in order of execution
    def prepare(self) -> None:
        if self.run.requests.exists() and not self.args.overwrite:
            raise SweepError(f"{self.run.path} already holds a run (requests.parquet); "
                             f"choose another --out or pass --overwrite")
        self.run.create()
        for stale in (self.run.requests, self.run.steps, self.run.spans, self.run.locust_final,
                      self.run.ceiling):
            stale.unlink(missing_ok=True)
        self.config = run_config(self.argv, self.args, self.schedule, self.rule, self.sizes,
                                 self.rates)
        write_config(self.run.path, self.config)

    def build_corpus(self) -> None:
        entries = self.corpus = corpus_manifest(self.run, self.sizes, self.args.manifest)
        self.config["corpus"] = corpus_summary(entries)
        if not self.sizes:
            self.config["load"]["sizes"] = sorted({e["size_class"] for e in entries})

    def start_gateway(self) -> str:
        """Start the stack (or wait for ``--host``); record what runs; return the gateway URL."""
        a = self.args
        if a.host:
            host = a.host.rstrip("/")
            wait_ready(host, a.startup_timeout)
        else:
            self.stack = build_stack(a, self.run, self.config, worker_options)
            try:
                self.stack.start(a.startup_timeout)
            except ProcessFailed as exc:
                raise SweepError(f"could not start {self.stack.failed}: {exc}") from None
            describe_stack(self.stack, self.config)
            host = self.gateway.url
            if a.faults:
                try:
                    self.faults = FaultInjector(a.faults, self.stack,
                                                say=lambda m: print(m, file=sys.stderr, flush=True))
                except ValueError as exc:
                    raise SweepError(str(exc)) from None
        try:
            self.config["gateway"] = http_get_json(host + "/v1/config")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.config["gateway"] = {"error": f"GET /v1/config failed: {exc}"}
        self.config["run"].update(host=host, managed_gateway=self.gateway is not None)
        write_config(self.run.path, self.config)
        return host

    def measure_ceiling(self) -> None:   # loadtest/ceiling.py: RUN_DIR/ceiling.json
        from loadtest.ceiling import sweep_phase
        self.config["ceiling"] = sweep_phase(self)

    def run_locust(self, host: str) -> None:
        if self.args.depth_interval > 0:
            self.depth = DepthSampler(host, self.args.depth_interval).start()
        cmd = locust_command(self.run, self.schedule, self.rule, self.sizes, host, self.args, self.rates)
        n = self.args.locust_workers
        self.locust = LocustRun(cmd, self.run.logs, self.sizes, self.run, n).start()
        self.config["locust_command"] = self.locust.cmd
        self.config["locust"] = self.locust.config()
        if n:
            self.config["load"]["locust_workers"] = n
        self.watch()
        if self.faults is not None:
            self.faults.join()    # a piece still coming back is back before the stack stops
        code, worker_codes = self.locust.stop()
        self.config["locust"]["exit_code"] = code
        if worker_codes:
            self.config["locust"]["worker_exit_codes"] = worker_codes
        # Locust exits 1 when some requests failed: that is a result, not a crash.
        if code not in (0, 1) or not self.run.requests.exists():
            raise SweepError(f"Locust failed (exit code {code}); last lines of "
                             f"{self.locust.master.log_path}:\n{self.locust.master.log_tail()}")

    def watch(self) -> None:
        """Until Locust exits: sample CPU, show progress, fail if a piece of the stack died."""
        def sample(now: int) -> None:
            gc = cpu_seconds(self.gateway.pid) if self.gateway else None
            self.samples.append((now, self.locust.cpu_seconds(), gc))
            for name, pid in (self.stack.cpu_pids() if self.stack else {}).items():
                self.proc_samples.append((now, name, cpu_seconds(pid)))
            if self.faults is not None:
                self.faults.tick(now)
            allowed = self.faults.expected_dead() if self.faults is not None else set()
            for p in (self.stack.dead() if self.stack else []):
                if p.name in allowed:
                    continue
                raise SweepError(f"{p.name} died during the sweep (code {p.exit_code}); last "
                                 f"lines of {p.log_path}:\n{log_tail(p.log_path)}")

        self.locust.watch(self.schedule, self.args.stability_max_seconds,
                          self.args.sample_interval, self.run.locust_progress, sample)

    def stop_stack(self) -> None:
        stop_stack(self.stack, self.config)

    def finish(self, status: str = "complete") -> None:
        n_spans = merge_span_parts(self.run.path)
        steps = read_steps(self.run.path).to_dict("records")
        n_req = len(read_requests(self.run.path))
        cpu, per_process = write_cpu_tables(self.run, self.samples, self.proc_samples, steps)
        if per_process:
            self.config["process_cpu"] = per_process
        if self.depth is not None:
            self.depth.stop()
            self.depth.write(self.run.path / "broker_depth.parquet")
        self.config["steps"] = [{k: int(v) for k, v in s.items()} for s in steps]
        self.config["load_generator_cpu"] = cpu
        self.config.setdefault("locust", {}).update(final=read_json(self.run.locust_final),
                                                    stats_csv_aggregated=read_locust_stats_csv(self.run.path))
        self.config["counts"] = {"requests": n_req, "spans": n_spans}
        self.config["stability_live"] = read_json(self.run.locust_stability)
        if self.rates:
            self.config["open_loop"] = read_json(self.run.locust_openloop)
        if self.faults is not None:
            self.config["faults"] = self.faults.records()
        self.config["run"].update(status=status, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        write_config(self.run.path, self.config)
        for c in cpu:
            if (c.get("locust_cores") or 0) > 0.8:
                print(f"sweep: WARNING: Locust used {c['locust_cores']:.2f} cores at {c['users']} users: "
                      f"the load generator may be the bottleneck", file=sys.stderr)

    def cleanup(self, status: str) -> None:
        """Stop whatever still runs (a second Ctrl-C must not leave orphans, so signals are ignored
        meanwhile); keep what an interrupted or failed run recorded, marked with its status."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if self.depth is not None:
            self.depth.stop()
        if self.locust is not None:
            self.locust.stop()
        self.stop_stack()
        if not self.run.config.exists() or status == "complete":
            return
        try:
            if self.run.requests.exists():
                self.finish(status)
                print(f"sweep: the partial run is kept in {self.run.path} (status {status}); "
                      f"python analysis/breakdown.py {self.run.path} reports on it", file=sys.stderr)
            else:
                self.config.setdefault("run", {})["status"] = status
                write_config(self.run.path, self.config)
        except Exception as exc:  # salvage is best effort; the original error matters more
            print(f"sweep: could not finalise the partial run: {type(exc).__name__}: {exc}", file=sys.stderr)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_sweep(sweep: Sweep) -> None:
    """The phases, in order (cleanup is the caller's)."""
    sweep.prepare()
    sweep.build_corpus()
    host = sweep.start_gateway()
    sweep.measure_ceiling()
    print(f"sweep: {host} ready; Locust: {sweep.schedule.users} users, "
          f"{sweep.schedule.total_seconds:.0f} s, logs in {sweep.run.logs}", file=sys.stderr)
    sweep.run_locust(host)
    sweep.stop_stack()      # clients closed first: Triton writes its trace when it stops
    sweep.finish()
    join_serving(sweep.stack, sweep.run, sweep.config)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.repeat != 1:
        from loadtest.repeat import repeat_sweep

        return repeat_sweep(args.repeat, args.out, argv)
    # SIGTERM/SIGHUP like Ctrl-C; SIGINT explicitly too (it is ignored in background jobs)
    old = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        sweep = Sweep(args, argv)
    except SweepError as exc:
        print(f"sweep: {exc}", file=sys.stderr)
        return 2
    status = "failed"
    try:
        run_sweep(sweep)
        status = "complete"
    except SweepError as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        status = "interrupted"
        print("\nsweep: interrupted; stopping Locust and the gateway", file=sys.stderr)
        return 130
    finally:
        sweep.cleanup(status)
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if args.no_report:
        print(f"run directory: {sweep.run.path}")
        return 0
    return report(sweep)


def report(sweep: Sweep) -> int:
    from analysis.breakdown import report as breakdown_report

    try:
        rep = breakdown_report(sweep.run.path)
    except Exception as exc:  # the run is on disk: say so, and how to retry the report
        print(f"sweep: the breakdown report failed ({type(exc).__name__}: {exc}); the run is in "
              f"{sweep.run.path}, retry with: python analysis/breakdown.py {sweep.run.path}",
              file=sys.stderr)
        return 1
    print(f"run directory: {sweep.run.path}\nreport: {rep.files['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
