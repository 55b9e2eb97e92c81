"""Headless concurrency sweep: gateway + one Locust process + run directory + breakdown report.

    python -m loadtest.sweep --out RUN_DIR --users 1,2,4,8 --step-seconds 20 --warmup-seconds 5 \\
        [--sizes 0.1MP,1MP,8MP] [--host URL | gateway options, e.g. --k 4 or --gateway-arg=--k=4]
    python -m loadtest.sweep --out RUN_DIR --arrivals poisson --rates 2,4,8 --step-seconds 20 ...
        (open loop: target request rates instead of concurrent users)
    ... --stability-max-seconds 60   (extend an unstable step up to 60 s; --stability-window,
        --min-requests set the rule; the report judges every step with it either way)

Without ``--host`` the gateway is started here (``python -m pipelines.gateway`` on a free loopback
port, spans into RUN_DIR/spans, log in RUN_DIR/logs/gateway.log) and stopped at the end by PID
(SIGTERM, then SIGKILL of its process group after a timeout). Options this runner does not know
are passed to the gateway. Locust runs in its own process (it monkey-patches with gevent) with
``loadtest/locustfile.py`` and the stepped shape of ``loadtest/shapes.py``; its CPU time and the
gateway's are sampled with psutil and reported per step. At the end: spans/ parts are merged into
spans.parquet, config.json says what ran, and ``analysis/breakdown.py`` prints and writes the report.

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
import importlib.metadata
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.schedule import ARRIVALS, StepSchedule, parse_rates  # (not shapes: Locust)
from overhead.contract.runconfig import write_config
from overhead.contract.rundir import (
    RunDir, merge_span_parts, read_json, read_locust_stats_csv, read_requests, read_steps,
    table_from_rows, write_json_atomic, write_parquet_atomic,
)
from overhead.contract.stability import StabilityRule

REPO = Path(__file__).resolve().parent.parent

LOCUSTFILE = REPO / "loadtest" / "locustfile.py"
VERSION_PACKAGES = ("overhead", "locust", "gevent", "geventhttpclient", "fastapi", "uvicorn",
                    "onnxruntime", "opencv-python-headless", "simplejpeg", "pillow", "numpy",
                    "pandas", "pyarrow", "redis", "kafka-python", "tritonclient", "psutil")


class SweepError(RuntimeError):
    """A failure with a message meant for the user (printed without a traceback)."""


# --- child processes --------------------------------------------------------------------------

def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join("    " + ln for ln in text[-lines:])


@dataclass
class Child:
    """A subprocess in its own process group, logging to a file."""
    name: str
    cmd: list[str]
    log: Path
    env: dict | None = None
    proc: subprocess.Popen | None = None
    stopped_by: str | None = None
    _logf: object = None

    def start(self) -> "Child":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._logf = open(self.log, "ab")
        self._logf.write(f"$ {shlex.join(self.cmd)}\n".encode())
        self._logf.flush()
        self.proc = subprocess.Popen(self.cmd, stdout=self._logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=str(REPO), env=self.env,
                                     start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float) -> int | None:
        """SIGTERM the process itself (it flushes what it holds), wait, then SIGKILL its whole
        process group; also SIGKILL any group member it left behind. Sets ``stopped_by``:
        "exited" (before we asked), "SIGTERM" (within the timeout) or "SIGKILL"."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            self.stopped_by = "exited"
        else:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
                self.stopped_by = "SIGTERM"
            except subprocess.TimeoutExpired:
                self.stopped_by = "SIGKILL"
                print(f"sweep: {self.name} (pid {self.pid}) did not stop within {timeout:.0f} s "
                      f"after SIGTERM; killing its process group", file=sys.stderr)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers (or the leader itself)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        if self._logf:
            self._logf.close()
            self._logf = None
        return self.proc.returncode


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user+system) of a process, its reaped children and its live descendants."""
    import psutil

    try:
        p = psutil.Process(pid)
        t = p.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for c in p.children(recursive=True):
            try:
                ct = c.cpu_times()
                total += ct.user + ct.system
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return None


def http_get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def wait_ready(url: str, child: Child | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise SweepError(f"the gateway exited (code {child.proc.returncode}) before it was ready; "
                             f"last lines of {child.log}:\n{log_tail(child.log)}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.2)
    tail = f"; last lines of {child.log}:\n{log_tail(child.log)}" if child else ""
    raise SweepError(f"{url}/healthz not ready after {timeout:.0f} s (last error: {last}){tail}")


# --- what ran ---------------------------------------------------------------------------------

def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def machine() -> dict:
    import psutil

    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return dict(cpu_model=model or platform.processor() or platform.machine(), cores=os.cpu_count(),
                mem_gib=round(psutil.virtual_memory().total / 2**30, 1),
                platform=platform.platform(), hostname=platform.node())


def git_info() -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        rev = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        return {"rev": rev or None, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"rev": None}


# --- corpus -----------------------------------------------------------------------------------

def corpus_manifest(run: RunDir, sizes: list[str], manifest: str | None) -> list[dict]:
    """Write RUN_DIR/corpus.json (name, size_class, path, width, height, nbytes) for the locustfile."""
    if manifest:
        entries = json.loads(Path(manifest).read_text())
        if isinstance(entries, dict):
            entries = entries.get("images", [])
        base = Path(manifest).resolve().parent
        for e in entries:
            p = Path(e["path"])
            e["path"] = str(p if p.is_absolute() else base / p)
            e.setdefault("nbytes", Path(e["path"]).stat().st_size)
    else:
        from pipelines.corpus import SIZE_CLASSES, build_corpus  # this process may import cv2

        unknown = set(sizes) - set(SIZE_CLASSES)
        if unknown:
            raise SweepError(f"unknown size class {sorted(unknown)}; choose from {SIZE_CLASSES}")
        entries = [dict(name=i.name, size_class=i.size_class, path=str(Path(i.path).resolve()),
                        width=int(i.width), height=int(i.height), nbytes=int(i.nbytes))
                   for i in build_corpus(sizes=tuple(sizes) or SIZE_CLASSES)]
    if sizes:
        entries = [e for e in entries if e["size_class"] in sizes]
        missing = set(sizes) - {e["size_class"] for e in entries}
        if missing:
            raise SweepError(f"the corpus has no images of size class {sorted(missing)}")
    if not entries:
        raise SweepError("the corpus is empty")
    write_json_atomic(entries, run.corpus)
    return entries


def corpus_summary(entries: list[dict]) -> dict:
    by_size: dict = {}
    for e in entries:
        d = by_size.setdefault(e["size_class"], {"count": 0, "bytes": 0, "pixels": 0})
        d["count"] += 1
        d["bytes"] += int(e.get("nbytes") or 0)
        d["pixels"] += int(e.get("width") or 0) * int(e.get("height") or 0)
    return {"images": len(entries), "by_size": {
        s: {"count": d["count"], "mean_bytes": d["bytes"] / d["count"],
            "mean_megapixels": round(d["pixels"] / d["count"] / 1e6, 3)} for s, d in by_size.items()}}


# --- CPU per step -----------------------------------------------------------------------------

def _interp(samples: list[tuple], t_ns: int, col: int) -> float | None:
    pts = [(s[0], s[col]) for s in samples if s[col] is not None]
    if not pts:
        return None
    if t_ns <= pts[0][0]:
        return pts[0][1]
    for (t0, v0), (t1, v1) in zip(pts, pts[1:]):
        if t0 <= t_ns <= t1:
            return v0 + (v1 - v0) * (t_ns - t0) / max(t1 - t0, 1)
    return pts[-1][1]


def cpu_per_step(samples: list[tuple], steps: list[dict]) -> list[dict]:
    """Cores used by Locust and by the gateway over each step's measured window.
    ``samples`` are ``(time_ns, locust_cpu_s, gateway_cpu_s)``."""
    out = []
    for s in steps:
        a, b = s["measure_start_ns"], s["end_ns"]
        wall = max(b - a, 1) / 1e9
        row = dict(step=int(s["step"]), users=int(s["users"]), window_s=round(wall, 3))
        for col, name in ((1, "locust_cores"), (2, "gateway_cores")):
            va, vb = _interp(samples, a, col), _interp(samples, b, col)
            row[name] = None if va is None or vb is None else round((vb - va) / wall, 4)
        out.append(row)
    return out


# --- progress ---------------------------------------------------------------------------------

class Progress:
    """A rich progress bar on a terminal, plain lines otherwise (every step change and 10 s)."""

    def __init__(self, total_s: float, n_steps: int):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.total_s, self.n_steps = total_s, n_steps
        self.bar = None
        self._last_line = 0.0
        self._last_step = None
        if self.console.is_terminal:
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                                    TextColumn("/ {task.total:.0f} s"), console=self.console)
            self.task = self.bar.add_task("starting Locust", total=total_s)
            self.bar.start()

    def update(self, state: dict, elapsed_s: float) -> None:
        step, users = state.get("step"), state.get("users", 0)
        counts = f"{state.get('requests', 0)} requests · {state.get('failures', 0)} failed"
        if state.get("finished"):
            desc = f"finishing · {counts}"
        elif step is None:
            desc = "starting Locust"
        else:
            desc = f"step {step + 1}/{self.n_steps} · {users} user{'' if users == 1 else 's'} · {counts}"
        if self.bar is not None:
            self.bar.update(self.task, description=desc, completed=min(elapsed_s, self.total_s))
        elif step != self._last_step or time.monotonic() - self._last_line >= 10:
            self.console.print(f"[{elapsed_s:5.0f}/{self.total_s:.0f} s] {desc}", highlight=False)
            self._last_line = time.monotonic()
        self._last_step = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# --- the sweep --------------------------------------------------------------------------------

def parse_args(argv: list[str] | None):
    from overhead.config import LoadSettings
    ap = argparse.ArgumentParser(prog="python -m loadtest.sweep", description=__doc__.split("\n\n")[0],
                                 allow_abbrev=False,  # never swallow a gateway option by its prefix
                                 epilog="Unknown options are passed to the gateway.")
    ap.add_argument("--out", required=True, help="run directory to create")
    ap.add_argument("--users", default="1,2,4,8",
                    help='concurrency steps, "1,2,4,8" or per-step seconds "1:20,2:30"')
    LoadSettings.add_arguments(ap)   # --step-seconds, --warmup-seconds, --arrivals, --rates, ...
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
    ap.add_argument("--no-report", action="store_true", help="skip the breakdown report")
    ap.add_argument("--overwrite", action="store_true", help="reuse a run directory that has results")
    args, extra = ap.parse_known_args(argv)
    vars(args).update(LoadSettings.from_namespace(args).model_dump())  # flags > OVERHEAD_* > defaults
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
    if args.worker_processes < 0:
        ap.error("--worker-processes must be >= 0")
    if args.worker_processes and (args.broker or "memory://").startswith("memory"):
        ap.error("--worker-processes needs a broker outside the gateway: --broker redis://local, "
                 "kafka://local, redis://HOST:PORT or kafka://HOST:PORT (memory:// lives inside "
                 "the gateway process)")
    return args


def _with_query(url: str, **opts) -> str:
    """``url`` with ``opts`` added to its query string unless already there."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    q = dict(parse_qsl(parts.query, keep_blank_values=True))
    for k, v in opts.items():
        q.setdefault(k, str(v))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(q), parts.fragment))


def worker_options(gateway_args: list[str]) -> list[str]:
    """The classifier options of the gateway, as ``pipelines.worker`` arguments."""
    from overhead.config import GatewaySettings, worker_argv

    return worker_argv(GatewaySettings.from_args(gateway_args, known_only=True))


class DepthSampler:
    """A thread polling the gateway's ``GET /v1/stats`` (``broker.depth`` per topic)."""

    def __init__(self, host: str, interval_s: float):
        import threading

        self.host, self.interval_s = host, interval_s
        self.rows: list[tuple] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="depth-sampler", daemon=True)

    def start(self) -> "DepthSampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                st = http_get_json(self.host + "/v1/stats", timeout=max(2.0, self.interval_s))
            except (urllib.error.URLError, OSError, ValueError):
                continue
            b = st.get("broker") or {}
            t = int(st.get("time_ns") or time.time_ns())
            for topic, depth in (b.get("depth") or {}).items():
                self.rows.append((t, str(b.get("name")), topic, int(depth)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Sweep:
    args: argparse.Namespace
    argv: list[str]
    run: RunDir = None
    schedule: StepSchedule = None
    gateway: Child | None = None
    locust: Child | None = None
    locust_workers: list = field(default_factory=list)
    workers: list = field(default_factory=list)
    broker_server: object = None
    depth: DepthSampler | None = None
    serving: object = None           # deploy.triton.sweep_server.ManagedTriton (--server triton)
    proc_samples: list = field(default_factory=list)
    samples: list = field(default_factory=list)
    config: dict = field(default_factory=dict)

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

    # each phase is a method, in order of execution
    def prepare(self) -> None:
        if self.run.requests.exists() and not self.args.overwrite:
            raise SweepError(f"{self.run.path} already holds a run (requests.parquet); "
                             f"choose another --out or pass --overwrite")
        self.run.create()
        for stale in (self.run.requests, self.run.steps, self.run.spans, self.run.locust_final):
            stale.unlink(missing_ok=True)
        self.config = {
            "run": {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "status": "running",
                    "command": [sys.executable, "-m", "loadtest.sweep", *self.argv], "cwd": os.getcwd()},
            "load": {"tool": "locust", "user_class": "FastHttpUser", "closed_loop": not self.rates,
                     "schedule": [{"users": u, "seconds": s} for u, s in self.schedule.steps],
                     "warmup_seconds": self.schedule.warmup_seconds, "sizes": self.sizes,
                     "stability": {**self.rule.to_dict(),
                                   "extend_up_to_s": self.args.stability_max_seconds or None}},
            "machine": machine(), "versions": versions(), "git": git_info(),
        }
        if self.rates:
            self.config["load"].update(arrivals=self.args.arrivals, rates=self.rates,
                                       max_in_flight=self.args.max_in_flight, seed=self.args.seed,
                                       schedule=[{"rate": r, "seconds": s} for r, (_, s)
                                                 in zip(self.rates, self.schedule.steps)])
        write_config(self.run.path, self.config)

    def build_corpus(self) -> None:
        entries = corpus_manifest(self.run, self.sizes, self.args.manifest)
        self.config["corpus"] = corpus_summary(entries)
        if not self.sizes:
            self.config["load"]["sizes"] = sorted({e["size_class"] for e in entries})

    def start_gateway(self) -> str:
        a = self.args
        if a.host:
            host = a.host.rstrip("/")
            wait_ready(host, None, a.startup_timeout)
        else:
            port = free_port()
            host = f"http://127.0.0.1:{port}"
            if a.server == "triton":
                self.start_serving()
            cmd = [*shlex.split(a.gateway_command), "--host", "127.0.0.1", "--port", str(port),
                   "--spans-dir", str(self.run.spans_parts.resolve()), *a.gateway_args,
                   *self.start_broker_and_workers()]
            self.gateway = Child("gateway", cmd, self.run.logs / "gateway.log").start()
            self.config["gateway_command"] = cmd
            self.config["gateway_process"] = {"pid": self.gateway.pid}
            print(f"sweep: starting the gateway (pid {self.gateway.pid}, log {self.gateway.log}) ...",
                  file=sys.stderr)
            wait_ready(host, self.gateway, a.startup_timeout)
        try:
            self.config["gateway"] = http_get_json(host + "/v1/config")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.config["gateway"] = {"error": f"GET /v1/config failed: {exc}"}
        self.config["run"].update(host=host, managed_gateway=self.gateway is not None)
        write_config(self.run.path, self.config)
        return host

    def start_serving(self) -> None:
        """--server triton: repository + tritonserver (trace on); gateway/worker arguments."""
        from deploy.triton.server import TritonServerError
        from deploy.triton.sweep_server import ManagedTriton

        a = self.args
        self.serving = ManagedTriton(self.run.path, a.gateway_args, protocol=a.triton_protocol,
                                     max_batch=a.triton_max_batch,
                                     queue_delay_us=a.triton_queue_delay_us,
                                     instances=a.triton_instances)
        try:
            self.serving.start()
        except TritonServerError as exc:
            raise SweepError(f"could not start tritonserver: {exc}") from None
        a.gateway_args = [*a.gateway_args, *self.serving.gateway_args()]
        self.config["serving"] = self.serving.info
        print(f"sweep: started tritonserver (pid {self.serving.pid()}) at {self.serving.url}",
              file=sys.stderr)

    def stop_serving_and_join(self) -> None:
        """After the gateway and workers stopped and spans.parquet is merged."""
        if self.serving is None:
            return
        self.serving.stop()
        self.config["serving"] = self.serving.join(self.run.path)
        write_config(self.run.path, self.config)
        cc = self.config["serving"].get("cross_check")
        if cc:
            from deploy.triton.sweep_server import format_cross_check
            print(format_cross_check(cc), file=sys.stderr)

    def start_broker_and_workers(self) -> list[str]:
        """Start a local broker server and the worker processes if asked; return the gateway
        arguments they need (after the user's, so they win)."""
        a = self.args
        if not a.broker:
            return []
        url = a.broker
        broker = {"requested": url}
        from deploy.local_servers import is_local_url

        if is_local_url(url):
            from deploy.local_servers import ServerFailed, ServerMissing, start_local

            try:
                self.broker_server, url = start_local(url, self.run.logs)
            except (ServerMissing, ServerFailed) as exc:
                raise SweepError(f"could not start the local broker for {a.broker}: {exc}") from None
            broker.update(local=True, pid=self.broker_server.pid, server=self.broker_server.name,
                          log=str(self.broker_server.log_path))
            print(f"sweep: started {self.broker_server.name} (pid {self.broker_server.pid}) at "
                  f"{url}", file=sys.stderr)
        gw_url = _with_query(url, lag_groups="classifiers") if url.startswith("kafka") else url
        from brokers.redis_streams import redact_url

        broker.update(url=redact_url(url), gateway_url=redact_url(gw_url))
        self.config["broker"] = broker
        args = ["--broker", gw_url]
        n = a.worker_processes
        self.config["workers"] = {"processes": n, "in_gateway": None if n == 0 else 0}
        if n:
            wargs = [*worker_options(a.gateway_args), *a.worker_arg]
            for i in range(n):
                cmd = [sys.executable, "-m", "pipelines.worker", "--broker", url,
                       "--name", f"sweep-worker-{i}", *wargs]
                self.workers.append(Child(f"worker-{i}", cmd, self.run.logs / f"worker-{i}.log").start())
            self.config["workers"].update(command=[w.cmd for w in self.workers],
                                          pids=[w.pid for w in self.workers])
            deadline = time.monotonic() + a.startup_timeout
            for w in self.workers:
                while "consuming" not in w.log.read_text(errors="replace"):
                    if not w.alive() or time.monotonic() > deadline:
                        raise SweepError(f"{w.name} did not start (code {w.proc.returncode}); last "
                                         f"lines of {w.log}:\n{log_tail(w.log)}")
                    time.sleep(0.1)
            print(f"sweep: {n} worker process(es) consuming from {redact_url(url)}", file=sys.stderr)
            args += ["--workers", "0"]
        write_config(self.run.path, self.config)
        return args

    def extra_pids(self) -> dict:
        out = {w.name: w.pid for w in self.workers if w.alive()}
        if self.broker_server is not None and self.broker_server.running():
            out["broker-" + self.broker_server.name] = self.broker_server.pid
        if self.serving is not None and self.serving.pid():
            out["tritonserver"] = self.serving.pid()
        return out

    def run_locust(self, host: str) -> None:
        if self.args.depth_interval > 0:
            self.depth = DepthSampler(host, self.args.depth_interval).start()
        s = self.schedule
        spec = ",".join(f"{u}:{sec:g}" for u, sec in s.steps)
        cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
               "--csv", str(self.run.locust_csv_prefix.resolve()), "--csv-full-history",
               "--only-summary", "--loglevel", "INFO",
               "--overhead-run-dir", str(self.run.path.resolve()),
               "--overhead-manifest", str(self.run.corpus.resolve()),
               "--overhead-sizes", ",".join(self.sizes),
               "--overhead-steps", spec, "--overhead-step-seconds", f"{s.steps[0][1]:g}",
               "--overhead-warmup-seconds", f"{s.warmup_seconds:g}",
               "--overhead-stability-window", f"{self.rule.window_s:g}",
               "--overhead-min-requests", str(self.rule.min_requests),
               "--overhead-stability-max-seconds", f"{self.args.stability_max_seconds:g}"]
        if self.rates:
            cmd += ["--overhead-arrivals", self.args.arrivals,
                    "--overhead-rates", ",".join(f"{r:g}" for r in self.rates),
                    "--overhead-max-in-flight", str(self.args.max_in_flight),
                    "--overhead-seed", str(self.args.seed)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OVERHEAD_")}
        n = self.args.locust_workers
        if n:
            mport = free_port()
            cmd += ["--master", "--expect-workers", str(n), "--master-bind-host", "127.0.0.1",
                    "--master-bind-port", str(mport)]
        self.locust = Child("locust", cmd, self.run.logs / "locust.log", env=env).start()
        self.config["locust_command"] = cmd
        self.config["locust"] = {"pid": self.locust.pid}
        if n:
            for i in range(n):
                wcmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker",
                        "--master-host", "127.0.0.1", "--master-port", str(mport), "--loglevel", "INFO",
                        "--overhead-manifest", str(self.run.corpus.resolve()),
                        "--overhead-sizes", ",".join(self.sizes)]
                self.locust_workers.append(Child(f"locust-worker-{i}", wcmd,
                                                 self.run.logs / f"locust-worker-{i}.log", env=env).start())
            self.config["locust"].update(workers=n, worker_pids=[w.pid for w in self.locust_workers],
                                         worker_commands=[w.cmd for w in self.locust_workers])
            self.config["load"]["locust_workers"] = n
        progress = Progress(s.total_seconds, len(s.steps))
        t0 = time.monotonic()
        extra = sum(max(self.args.stability_max_seconds - sec, 0.0) for _, sec in s.steps)
        deadline = t0 + s.total_seconds + extra + 120
        try:
            while self.locust.alive():
                now = time.time_ns()
                lc = cpu_seconds(self.locust.pid)
                for w in self.locust_workers:  # distributed: the generator is master + workers
                    wc = cpu_seconds(w.pid)
                    lc = None if lc is None or wc is None else lc + wc
                gc = cpu_seconds(self.gateway.pid) if self.gateway else None
                self.samples.append((now, lc, gc))
                for name, pid in self.extra_pids().items():
                    self.proc_samples.append((now, name, cpu_seconds(pid)))
                for w in self.workers:
                    if not w.alive():
                        raise SweepError(f"{w.name} died during the sweep (code {w.proc.returncode}); "
                                         f"last lines of {w.log}:\n{log_tail(w.log)}")
                state = read_json(self.run.locust_progress, {}) or {}
                progress.update(state, time.monotonic() - t0)
                if self.gateway is not None and not self.gateway.alive():
                    raise SweepError(f"the gateway died during the sweep (code "
                                     f"{self.gateway.proc.returncode}); last lines of "
                                     f"{self.gateway.log}:\n{log_tail(self.gateway.log)}")
                if time.monotonic() > deadline:
                    raise SweepError(f"Locust did not finish within {s.total_seconds + extra + 120:.0f} s; "
                                     f"see {self.locust.log}")
                time.sleep(self.args.sample_interval)
        finally:
            progress.close()
        code = self.locust.stop(15)
        self.config["locust"]["exit_code"] = code
        if self.locust_workers:
            self.config["locust"]["worker_exit_codes"] = [w.stop(10) for w in self.locust_workers]
        # Locust exits 1 when some requests failed: that is a result, not a crash.
        if code not in (0, 1) or not self.run.requests.exists():
            raise SweepError(f"Locust failed (exit code {code}); last lines of {self.locust.log}:\n"
                             f"{log_tail(self.locust.log)}")

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            code = self.gateway.stop(self.args.stop_timeout)
            # uvicorn re-raises SIGTERM after a graceful shutdown: exit code -15 is normal here
            self.config.setdefault("gateway_process", {}).update(exit_code=code,
                                                                 stopped_by=self.gateway.stopped_by)

    def finish(self, status: str = "complete") -> None:
        n_spans = merge_span_parts(self.run.path)
        steps = read_steps(self.run.path).to_dict("records")
        n_req = len(read_requests(self.run.path))
        if self.samples:
            write_parquet_atomic(table_from_rows(
                [(t, lc, gc) for t, lc, gc in self.samples],
                (("time_ns", "int64"), ("locust_cpu_s", "float64"), ("gateway_cpu_s", "float64"))),
                self.run.cpu)
        cpu = cpu_per_step(self.samples, steps)
        if self.depth is not None:
            self.depth.stop()
            write_parquet_atomic(table_from_rows(self.depth.rows, (
                ("time_ns", "int64"), ("broker", "string"), ("topic", "string"),
                ("depth", "int64"))), self.run.path / "broker_depth.parquet")
        if self.proc_samples:
            write_parquet_atomic(table_from_rows(self.proc_samples, (
                ("time_ns", "int64"), ("process", "string"), ("cpu_s", "float64"))),
                self.run.path / "process_cpu.parquet")
            per = {}
            for name in sorted({n for _, n, _ in self.proc_samples}):
                pts = [(t, None, c) for t, n, c in self.proc_samples if n == name]
                per[name] = [{"step": c["step"], "users": c["users"], "cores": c["gateway_cores"]}
                             for c in cpu_per_step(pts, steps)]
            self.config["process_cpu"] = per
        self.config["steps"] = [{k: int(v) for k, v in s.items()} for s in steps]
        self.config["load_generator_cpu"] = cpu
        self.config.setdefault("locust", {}).update(final=read_json(self.run.locust_final),
                                                    stats_csv_aggregated=read_locust_stats_csv(self.run.path))
        self.config["counts"] = {"requests": n_req, "spans": n_spans}
        self.config["stability_live"] = read_json(self.run.locust_stability)
        if self.rates:
            self.config["open_loop"] = read_json(self.run.locust_openloop)
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
        for child, timeout in ((self.locust, 15), *((w, 10) for w in self.locust_workers),
                               (self.gateway, self.args.stop_timeout),
                               *((w, 10) for w in self.workers)):
            if child is not None and child.proc is not None and child.proc.returncode is None:
                child.stop(timeout)
        if self.broker_server is not None:
            self.broker_server.stop()   # by PID
            self.config.setdefault("broker", {})["stopped"] = True
        if self.serving is not None and self.serving.server is not None:
            self.serving.stop()         # by PID
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    # SIGTERM/SIGHUP like Ctrl-C; SIGINT explicitly too (it is ignored in background jobs)
    old = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        sweep = Sweep(args, argv)
    except SweepError as exc:
        print(f"sweep: {exc}", file=sys.stderr)
        return 2
    status = "failed"
    try:
        sweep.prepare()
        sweep.build_corpus()
        host = sweep.start_gateway()
        print(f"sweep: {host} ready; Locust: {sweep.schedule.users} users, "
              f"{sweep.schedule.total_seconds:.0f} s, logs in {sweep.run.logs}", file=sys.stderr)
        sweep.run_locust(host)
        sweep.stop_gateway()
        for w in sweep.workers:
            w.stop(10)
        if sweep.broker_server is not None:
            sweep.broker_server.stop()   # by PID
            sweep.config.setdefault("broker", {})["stopped"] = True
        if sweep.serving is not None:
            sweep.serving.stop()        # clients closed above: Triton writes its trace now
        sweep.finish()
        sweep.stop_serving_and_join()
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
    from analysis.breakdown import report

    try:
        rep = report(sweep.run.path)
    except Exception as exc:  # the run is on disk: say so, and how to retry the report
        print(f"sweep: the breakdown report failed ({type(exc).__name__}: {exc}); the run is in "
              f"{sweep.run.path}, retry with: python analysis/breakdown.py {sweep.run.path}",
              file=sys.stderr)
        return 1
    print(f"run directory: {sweep.run.path}\nreport: {rep.files['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
