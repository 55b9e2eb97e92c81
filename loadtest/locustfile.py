"""Locust load for the Overhead gateway: closed-loop users POSTing corpus images to /v1/infer.

Run by ``loadtest/sweep.py`` (one Locust process for the whole sweep), or by hand::

    locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8000 \\
        --overhead-run-dir runs/x --overhead-manifest runs/x/corpus.json \\
        --overhead-steps 1,2,4 --overhead-step-seconds 20 --overhead-warmup-seconds 5

Every option also reads an env var (``OVERHEAD_RUN_DIR``, ``OVERHEAD_MANIFEST``,
``OVERHEAD_SIZES``, ``OVERHEAD_STEPS``, ``OVERHEAD_STEP_SECONDS``, ``OVERHEAD_WARMUP_SECONDS``,
``OVERHEAD_ARRIVALS``, ``OVERHEAD_RATES``, ...: see ``--help``).

Closed loop (default): each user sends its next request as soon as the previous answer is in.
Open loop (``--overhead-arrivals poisson|constant --overhead-rates 2,4,8``): one user runs a
scheduler greenlet that draws intended send times from the arrival process at the step's rate and
hands each request to a bounded gevent pool (``--overhead-max-in-flight``); ``intended_ns`` is the
scheduled time, ``send_ns`` when it really went out, so latency from ``intended_ns`` is free of
coordinated omission and ``send_ns - intended_ns`` is the schedule lag. A full pool makes the
scheduler wait (the lag then grows); those waits are counted per step in
``locust/openloop.json``. When a step other than the last ends, what it made due and has no
answer yet is recorded ``incomplete`` of that step (``records.give_up_step``; docs/loadtest.md).

Stable steps (``--overhead-stability-max-seconds S``, > step seconds): at the planned end of a step
the shape asks ``loadtest.records.live_check`` (``overhead/contract/stability.py`` on this
process's in-memory records); an unstable step (or one with too few requests) is held until it is stable or has run S seconds.
The live verdicts go to ``locust/stability.json``.

Each request gets one exact record (docs/architecture.md, requests.parquet) kept in memory and
written when the test stops, together with ``steps.parquet`` (the real step boundaries recorded by
``StepShape``) and ``locust/final_stats.json`` (Locust's own final counters, which its
``_stats.csv`` can lag). While running, ``locust/progress.json`` is refreshed every second for the
sweep runner.

Web UI (``locust -f loadtest/locustfile.py --host URL --web-host 127.0.0.1``, no ``--headless``):
without ``--overhead-steps`` the stepped shape is switched off, so the UI's own user count / spawn
rate apply. Every test (first POST /swarm to stop) gets its own run directory (``--overhead-run-dir``,
else ``runs/ui-<time>``; a second test in the same process gets ``DIR-2``, ...) with requests.parquet,
steps.parquet (one step per swarm: users, spawn rate, start, end; ``--overhead-warmup-seconds``,
default 0), config.json (host, swarms, the gateway's ``/v1/config``), corpus.json and spans
(``--overhead-spans-dir DIR``: the gateway's ``--spans-dir``; parts already in RUN_DIR/spans are
merged too). Without a manifest the cached corpus is built in a subprocess.

Overhead tab (web UI): the run's headline breakdown per size class, live, with the report's
critical-path attribution (``loadtest/overhead_tab.py``). Server-Timing components are not
Locust stats rows: Locust's integer-ms buckets cannot show sub-millisecond times, and
Server-Timing sums every crop's spans, so such rows could not add up to the request.

Distributed (``--master`` + ``--worker`` processes): each worker keeps its records and sends them
to the master (``overhead_records`` messages, in chunks) when its test stops, before Locust's
``client_stopped``; the master writes the one run directory. Open loop and live stability checks
need the records where the shape runs, so they are single-process only.

Modules: this file (the user class and the event wiring), ``loadtest/state.py`` (the one state
object), ``loadtest/records.py`` (records, run directory, distributed merge), ``loadtest/webui.py``
(web UI runs). Records are ``overhead.contract.records.RequestRecord``.

This process is gevent-patched: it must not import TensorFlow, ONNX Runtime, OpenCV or numpy-heavy
code. It reads image paths from a JSON manifest (a list of objects with ``name``, ``size_class``,
``path``) written by the sweep runner.
"""
from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import signal
import uuid
from pathlib import Path

import gevent
import gevent.pool
from locust import FastHttpUser, constant, events, task
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

from loadtest import records, webui
from loadtest.schedule import ARRIVALS, ArrivalProcess, parse_rates
from loadtest.shapes import StepShape  # noqa: F401  (Locust picks the shape up from here)
from loadtest.state import INFER_PATH, CorpusImage, LoadState, OpenLoop, Pending
from overhead.contract import clock
from overhead.contract.clock import now_ns  # the spans' clock: monotonic since start
from overhead.contract.records import RequestRecord
from overhead.contract.rundir import RunDir
from overhead.contract.stability import StabilityRule

log = logging.getLogger("overhead.locustfile")

GOLDEN = 0.6180339887498949  # user start offsets spread over the corpus for any user count

state = LoadState()   # everything this process keeps between events
clock.set_role("loadgen")


@events.init_command_line_parser.add_listener
def _add_arguments(parser):
    """``--overhead-*``: ``LocustSettings`` (overhead/config.py), generated; the load options have
    the sweep's defaults, and ``OVERHEAD_<NAME>`` sets each (the command line wins). On the parser
    itself, not an argument group: Locust's web UI lists only those (its advanced options,
    ``include_in_web_ui``; locustio/locust#2560). Locust prints ``--help`` before it imports a
    locustfile (locustio/locust#2917), so ``python loadtest/locustfile.py --help`` prints Locust's
    help with these options."""
    from overhead.config import LocustSettings

    LocustSettings.add_arguments(parser, prefix="overhead-", defaults=LocustSettings(),
                                 include_in_web_ui=True)


def load_manifest(path: str | os.PathLike, sizes: str = "") -> list[CorpusImage]:
    """Read the manifest, keep the wanted size classes, and interleave them round-robin so every
    short window of a user's cycle sends every size class."""
    entries = json.loads(Path(path).read_text())
    if isinstance(entries, dict):
        entries = entries.get("images", [])
    wanted = {s.strip() for s in sizes.split(",") if s.strip()}
    base = Path(path).resolve().parent
    by_size: dict[str, list[CorpusImage]] = {}
    for e in entries:
        if wanted and e["size_class"] not in wanted:
            continue
        p = Path(e["path"])
        p = p if p.is_absolute() else base / p
        ctype = "image/png" if p.suffix.lower() == ".png" else "image/jpeg"
        by_size.setdefault(e["size_class"], []).append(
            CorpusImage(e["name"], e["size_class"], p.read_bytes(), ctype))
    missing = wanted - set(by_size)
    if missing:
        raise ValueError(f"no images of size class {sorted(missing)} in {path}")
    order = []
    for group in itertools.zip_longest(*by_size.values()):
        order.extend(img for img in group if img is not None)
    return order


@events.init.add_listener
def _on_init(environment, **kw):
    state.env = environment
    opts = environment.parsed_options
    if opts is None:
        return
    records.register_messages(state, environment.runner)
    ui = webui.ui_mode(environment)
    if ui and not opts.overhead_steps:
        environment.shape_class = None  # the UI's user count and spawn rate apply
    if ui:
        web_ui = kw.get("web_ui") or getattr(environment, "web_ui", None)
        if web_ui is not None:
            webui.install_swarm_hook(state, web_ui)
    _load_corpus(environment, opts, ui)
    _configure_load(opts)
    state.drain_s = max(0.0, opts.overhead_drain_seconds)
    # Locust waits this long for users to finish their request when the run stops (then kills)
    environment.stop_timeout = max(environment.stop_timeout or 0, state.drain_s + 1)


def _load_corpus(environment, opts, ui: bool) -> None:
    manifest = opts.overhead_manifest or (
        str(RunDir(opts.overhead_run_dir).corpus) if opts.overhead_run_dir else "")
    if ui and not opts.overhead_manifest and not (manifest and Path(manifest).exists()):
        manifest = webui.default_manifest(opts.overhead_sizes)
    if not manifest or not Path(manifest).exists():
        raise SystemExit(f"overhead locustfile: no corpus manifest (set --overhead-manifest or "
                         f"OVERHEAD_MANIFEST; tried {manifest!r})")
    state.images[:] = load_manifest(manifest, opts.overhead_sizes)
    if not state.images:
        raise SystemExit(f"overhead locustfile: manifest {manifest} has no images")
    state.manifest = manifest
    if not opts.overhead_run_dir and not ui and not isinstance(environment.runner, WorkerRunner):
        log.warning("no --overhead-run-dir / OVERHEAD_RUN_DIR: per-request records not written")
    log.info("overhead: %d images (%s)", len(state.images), ", ".join(state.size_classes()))


def _configure_load(opts) -> None:
    """Open loop (arrivals at a rate per step) and the stability rule."""
    if opts.overhead_arrivals:
        if opts.overhead_arrivals not in ARRIVALS:
            raise SystemExit(f"overhead locustfile: --overhead-arrivals must be one of {ARRIVALS}")
        ol = state.open_loop = OpenLoop(kind=opts.overhead_arrivals,
                                        rates=parse_rates(opts.overhead_rates),
                                        max_in_flight=max(1, opts.overhead_max_in_flight),
                                        seed=opts.overhead_seed)
        InferUser.concurrency = ol.max_in_flight  # connections of the one user's client
        StepShape.on_step_end = functools.partial(records.give_up_step, state)
        log.info("overhead: open loop, %s arrivals at %s req/s", ol.kind, ol.rates)
    state.rule = StabilityRule(window_s=opts.overhead_stability_window,
                               min_requests=opts.overhead_min_requests)
    if opts.overhead_stability_max_seconds > 0:
        state.extend_up_to_s = opts.overhead_stability_max_seconds
        StepShape.stability = {"check": functools.partial(records.live_check, state),
                               "max_seconds": opts.overhead_stability_max_seconds}


class InferUser(FastHttpUser):
    """Closed loop: the next request goes out as soon as the previous answer is in."""
    wait_time = constant(0)

    def on_start(self):
        self.uid = next(state.user_ids)
        runner = self.environment.runner
        if isinstance(runner, WorkerRunner):  # unique across workers
            self.uid += 100_000 * (max(int(getattr(runner, "worker_index", 0) or 0), 0) + 1)
        n = len(state.images)
        self.pos = int(self.uid * GOLDEN * n) % n if n else 0

    def next_image(self) -> CorpusImage:
        img = state.images[self.pos % len(state.images)]
        self.pos += 1
        return img

    @task
    def infer(self):
        if state.open_loop is not None:
            return self.open_loop()
        self.request(self.next_image(), None)

    def open_loop(self):
        """The scheduler: intended times from the arrival process at the current step's rate,
        each request handed to the pool (which blocks the scheduler while full)."""
        ol = state.open_loop
        pool = state.pool = gevent.pool.Pool(ol.max_in_flight)
        arrivals = ArrivalProcess(ol.kind, ol.seed)
        next_ns = None
        while True:
            shape = records.step_shape(state.env)
            step = shape.tracker.current if shape is not None and shape.tracker is not None else 0
            if shape is not None and shape.tracker is not None and shape.tracker.finished:
                pool.join(timeout=state.drain_s)   # answers still due; the rest: incomplete
                raise StopUser()
            if step is None or step >= len(ol.rates):
                gevent.sleep(0.05)
                next_ns = None
                continue
            rate = ol.rates[step]
            if next_ns is None:
                next_ns = now_ns()
            next_ns += int(arrivals.gap_s(rate) * 1e9)
            delay = (next_ns - now_ns()) / 1e9
            if delay > 0:
                gevent.sleep(delay)
                if shape is not None and shape.tracker is not None and shape.tracker.finished:
                    continue   # the run ended while waiting: this arrival is past its end
            st = state.open_stats.setdefault(step, {"rate": rate, "scheduled": 0, "slot_waits": 0})
            st["scheduled"] += 1
            if pool.full():
                st["slot_waits"] += 1
            # due now: from here on it has a row, answered or not (records.give_up)
            p = Pending(uuid.uuid4().hex, self.uid, self.next_image(), next_ns)
            state.in_flight[p.request_id] = p
            if records.missed_its_step(state, shape, step, p):
                continue   # the scheduler woke after its step had ended: incomplete at once
            pool.spawn(self.request, p.image, next_ns, p)

    def request(self, img: CorpusImage, intended_ns: int | None, pending: Pending | None = None):
        send_ns = now_ns()
        if pending is not None and pending.request_id not in state.in_flight:
            return   # its step ended while it waited for a slot: recorded incomplete already
        p = pending or Pending(uuid.uuid4().hex, self.uid, img, send_ns)
        p.send_ns, rid = send_ns, p.request_id
        state.in_flight[rid] = p
        try:
            with self.client.post(INFER_PATH, data=img.data, name=img.label, catch_response=True,
                                  headers={"X-Request-ID": rid, "Content-Type": img.content_type}) as resp:
                recv_ns = now_ns()  # post() returns after the whole body has been read
                if state.in_flight.pop(rid, None) is None:
                    raise _TooLate()      # given up already (recorded incomplete): not twice
                self._record(p, resp, recv_ns)
        except _TooLate:
            pass
        finally:
            records.give_up(state, rid)   # killed mid-request (the run or the user stopped)

    def _record(self, p: Pending, resp, recv_ns: int) -> None:
        img, rid = p.image, p.request_id
        status = int(resp.status_code or 0)
        timing = (resp.headers.get("Server-Timing") if resp.headers else None) or ""
        error, k = _outcome(resp, status, rid)
        state.records.append(RequestRecord(
            request_id=rid, user=p.user, image=img.name, size_class=img.size_class,
            bytes=len(img.data), intended_ns=p.intended_ns, send_ns=p.send_ns, recv_ns=recv_ns,
            status=status, error=error, server_timing=timing, k=k))
        if error is None:
            resp.success()
        else:
            resp.failure(error)


class _TooLate(Exception):
    """An answer that came after its request was recorded as incomplete (not counted twice)."""


def _outcome(resp, status: int, rid: str) -> tuple[str | None, int]:
    """(error or None, k) of an answer."""
    error, k = None, -1
    try:
        if status == 200:
            body = json.loads(resp.content)
            k = int(body.get("k", -1))
            if body.get("request_id") != rid:
                error = f"request_id mismatch: sent {rid}, got {body.get('request_id')!r}"
        elif status == 0:
            error = f"{type(resp.error).__name__}: {resp.error}"
        else:
            error = _error_text(resp)
    except Exception as exc:  # a bad body is a failed request, not a crashed user
        error = f"bad response body: {type(exc).__name__}: {exc}"
    return error, k


def _error_text(resp) -> str:
    try:
        body = json.loads(resp.content)
        return f"HTTP {resp.status_code} {body.get('error', '')}: {body.get('message', '')}"[:500]
    except Exception:
        text = (resp.content or b"")[:300].decode("utf-8", "replace")
        return f"HTTP {resp.status_code}: {text}"


# --- test lifecycle: writing the run directory ------------------------------------------------

@events.test_start.add_listener
def _on_test_start(environment, **_):
    runner = environment.runner
    ui = webui.ui_mode(environment)
    if not ui:  # UI runs start their records at the first swarm
        state.reset_records()
    state.sent = 0
    if isinstance(runner, MasterRunner):
        state.by_worker.clear()
    opts = environment.parsed_options
    if ui and state.ui_test is None and getattr(opts, "autostart", False):
        webui.ui_swarm(state, environment, int(getattr(opts, "num_users", 0) or 0),  # no /swarm
                       float(getattr(opts, "spawn_rate", 0) or 0))
    if isinstance(runner, WorkerRunner):
        return
    if state.progress is None:
        state.progress = gevent.spawn(records.progress_loop, state, environment)
    # Locust installs its SIGTERM handler only after a headless shape run has ended, so until then
    # SIGTERM would kill it on the spot and lose every record. Stop the run gracefully instead
    # (test_stop and quit then write the run directory); Locust's own handler replaces this later.
    if opts is not None and opts.headless:
        gevent.signal_handler(signal.SIGTERM, _graceful_quit, environment)


def _graceful_quit(environment) -> None:
    log.info("overhead: SIGTERM, stopping the test and writing the records")
    if isinstance(environment.runner, MasterRunner):
        environment.runner.stop()  # the workers send their records before they report stopped
    if environment.runner is not None:
        environment.runner.quit()


def _write_all(environment) -> None:
    records.write_run(state, environment)
    records.write_final_stats(state, environment)


@events.test_stop.add_listener
def _on_test_stop(environment, **_):
    runner = environment.runner
    records.give_up_in_flight(state)   # no request the generator sent leaves without a row
    if isinstance(runner, WorkerRunner):
        records.send_records(state, runner)
    elif webui.ui_mode(environment):
        webui.stop_test(state, environment, functools.partial(_write_all, environment))
    else:
        records.write_run(state, environment)


@events.quit.add_listener
def _on_quit(**_):
    environment = state.env
    if environment is None:
        return
    if state.progress is not None:
        state.progress.kill(block=False)
    if isinstance(environment.runner, WorkerRunner):
        if len(state.records) > state.sent:
            records.send_records(state, environment.runner)
        return
    if webui.ui_mode(environment):
        if state.ui_test is not None:  # quit while a test runs (test_stop may not have fired)
            _on_test_stop(environment)
        gevent.joinall(state.late, timeout=webui.SPAN_FLUSH_WAIT_S + 5)
        return
    _write_all(environment)


if __name__ == "__main__":   # Locust's --help with the --overhead-* options (see _add_arguments)
    from locust.argument_parser import get_parser

    get_parser().parse_args()
