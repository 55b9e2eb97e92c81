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
``locust/openloop.json``.

Stable steps (``--overhead-stability-max-seconds S``, > step seconds): at the planned end of a step
the shape asks ``live_check`` (``analysis/stability.py`` on this process's in-memory records); an
unstable step (or one with too few requests) is held until it is stable or has run S seconds.
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

Components: each 200 answer's ``Server-Timing`` entries (``detect-decode``, ``classify-inference``,
...) are logged as Locust stats entries of type ``component`` (response time = the duration), so
the UI shows them as rows. They are written straight into their entries, never into Locust's
total: the ``Aggregated`` row and every total count only ``/v1/infer`` requests
(``--overhead-no-components`` turns this off).

Distributed (``--master`` + ``--worker`` processes): each worker keeps its records and sends them
to the master (``overhead_records`` messages, in chunks) when its test stops, before Locust's
``client_stopped``; the master writes the one run directory. Open loop and live stability checks
need the records where the shape runs, so they are single-process only.

This process is gevent-patched: it must not import TensorFlow, ONNX Runtime, OpenCV or numpy-heavy
code. It reads image paths from a JSON manifest (a list of objects with ``name``, ``size_class``,
``path``) written by the sweep runner.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import gevent
import gevent.pool
from locust import FastHttpUser, constant, events, task
from locust.runners import MasterRunner, WorkerRunner

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:  # locust puts only loadtest/ on sys.path
    sys.path.insert(0, str(_REPO))

from analysis.rundir import (  # noqa: E402  (light: pyarrow is imported lazily)
    REQUEST_COLUMNS, STEP_COLUMNS, RunDir, table_from_rows, write_json_atomic,
    write_parquet_atomic,
)
from analysis.stability import StabilityRule, assess  # noqa: E402  (pure Python)
from loadtest.schedule import ARRIVALS, ArrivalProcess, parse_rates  # noqa: E402
from loadtest.shapes import StepShape  # noqa: E402,F401  (Locust picks the shape up from here)

log = logging.getLogger("overhead.locustfile")

INFER_PATH = "/v1/infer"
GOLDEN = 0.6180339887498949  # user start offsets spread over the corpus for any user count

# One tuple per request, in REQUEST_COLUMNS order. list.append is atomic; users are greenlets.
RECORDS: list[tuple] = []
_written = {"requests": -1}
_user_ids = itertools.count()
OPEN_LOOP: dict = {}   # kind, rates, max_in_flight, seed when open loop; empty for closed loop
OPEN_STATS: dict = {}  # step -> {"rate", "scheduled", "slot_waits"}
STABILITY: dict = {}   # "rule": StabilityRule when a stability rule is in force
COMPONENTS = {"on": True}  # log Server-Timing entries as "component" stats entries
# UI mode: the test in progress ("run": RunDir, "steps": [...], "started_ns", ...), and a counter
UI: dict = {"test": None, "n": 0}
DIST: dict = {"sent": 0, "workers": {}}  # worker: records sent; master: worker id -> rows received
RECORDS_MSG = "overhead_records"
CHUNK = 5000


class CorpusImage:
    __slots__ = ("name", "size_class", "data", "label", "content_type")

    def __init__(self, name: str, size_class: str, data: bytes, content_type: str = "image/jpeg"):
        self.name, self.size_class, self.data = name, size_class, data
        self.label = f"{INFER_PATH} [{size_class}]"  # Locust's stats show size classes apart
        self.content_type = content_type


IMAGES: list[CorpusImage] = []
_ENV: dict = {}  # the Locust Environment, for the quit listener (which does not receive it)


@events.init_command_line_parser.add_listener
def _add_arguments(parser):
    """``--overhead-*``: ``LocustSettings`` (overhead/config.py), generated; the load options have
    the sweep's defaults, and ``OVERHEAD_<NAME>`` sets each (the command line wins)."""
    from overhead.config import LocustSettings

    LocustSettings.add_arguments(parser.add_argument_group("Overhead"), prefix="overhead-",
                                 defaults=LocustSettings())


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
def _on_init(environment, **_):
    _ENV["env"] = environment
    opts = environment.parsed_options
    if opts is None:
        return
    COMPONENTS["on"] = not opts.overhead_no_components
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        runner.register_message(RECORDS_MSG, _on_records_message)
    elif isinstance(runner, WorkerRunner):
        runner.register_message(RECORDS_MSG, lambda **_: None)
    ui = ui_mode(environment)
    if ui and not opts.overhead_steps:
        environment.shape_class = None  # the UI's user count and spawn rate apply
    if ui:
        web_ui = _.get("web_ui") or getattr(environment, "web_ui", None)
        if web_ui is not None:
            web_ui.app.after_request(_ui_after_request)
    manifest = opts.overhead_manifest or (
        str(RunDir(opts.overhead_run_dir).corpus) if opts.overhead_run_dir else "")
    if ui and not opts.overhead_manifest and not (manifest and Path(manifest).exists()):
        manifest = default_manifest(opts.overhead_sizes)
    if not manifest or not Path(manifest).exists():
        raise SystemExit(f"overhead locustfile: no corpus manifest (set --overhead-manifest or "
                         f"OVERHEAD_MANIFEST; tried {manifest!r})")
    IMAGES[:] = load_manifest(manifest, opts.overhead_sizes)
    if not IMAGES:
        raise SystemExit(f"overhead locustfile: manifest {manifest} has no images")
    UI["manifest"] = manifest
    if not opts.overhead_run_dir and not ui and not isinstance(runner, WorkerRunner):
        log.warning("no --overhead-run-dir / OVERHEAD_RUN_DIR: per-request records not written")
    log.info("overhead: %d images (%s)", len(IMAGES),
             ", ".join(sorted({i.size_class for i in IMAGES})))
    if opts.overhead_arrivals:
        if opts.overhead_arrivals not in ARRIVALS:
            raise SystemExit(f"overhead locustfile: --overhead-arrivals must be one of {ARRIVALS}")
        OPEN_LOOP.update(kind=opts.overhead_arrivals, rates=parse_rates(opts.overhead_rates),
                         max_in_flight=max(1, opts.overhead_max_in_flight), seed=opts.overhead_seed)
        InferUser.concurrency = OPEN_LOOP["max_in_flight"]  # connections of the one user's client
        log.info("overhead: open loop, %s arrivals at %s req/s", OPEN_LOOP["kind"], OPEN_LOOP["rates"])
    STABILITY["rule"] = StabilityRule(window_s=opts.overhead_stability_window,
                                      min_requests=opts.overhead_min_requests)
    if opts.overhead_stability_max_seconds > 0:
        StepShape.stability = {"check": live_check, "max_seconds": opts.overhead_stability_max_seconds}


def ui_mode(environment) -> bool:
    """Driven from the web UI: not headless, not a worker (a master with a UI counts)."""
    opts = environment.parsed_options
    return bool(opts is not None and not getattr(opts, "headless", False)
                and not isinstance(environment.runner, WorkerRunner))


def default_manifest(sizes: str = "") -> str:
    """Build (or reuse from the cache) the corpus in a subprocess (this process must not import
    OpenCV) and return the path of a manifest for it."""
    out = Path(tempfile.gettempdir()) / f"overhead-ui-corpus-{os.getpid()}.json"
    code = ("import sys; from pathlib import Path; from analysis.rundir import RunDir; "
            "from loadtest.sweep import corpus_manifest; import shutil, tempfile; "
            "d = Path(tempfile.mkdtemp()); corpus_manifest(RunDir(d), [s for s in sys.argv[2].split(',') if s], None); "
            "shutil.move(str(d / 'corpus.json'), sys.argv[1])")
    log.info("overhead: no corpus manifest given; building the cached corpus into %s", out)
    subprocess.run([sys.executable, "-c", code, str(out), sizes], cwd=str(_REPO), check=True,
                   timeout=600)
    return str(out)


def live_check(row: dict, now_ns: int):
    """Stability verdict of the running step from the in-memory records (successful requests
    completed since the step's measured start; latency from the intended send time)."""
    start = row["measure_start_ns"]
    comps = []
    for rec in reversed(RECORDS):  # appended on completion: newest last
        recv = rec[7]
        if recv < start:
            break
        if rec[8] == 200 and rec[9] is None:
            comps.append((recv, (recv - rec[5]) / 1e6))
    return assess(comps, start, now_ns, STABILITY.get("rule") or StabilityRule())


class InferUser(FastHttpUser):
    """Closed loop: the next request goes out as soon as the previous answer is in."""
    wait_time = constant(0)

    def on_start(self):
        self.uid = next(_user_ids)
        runner = self.environment.runner
        if isinstance(runner, WorkerRunner):  # unique across workers
            self.uid += 100_000 * (max(int(getattr(runner, "worker_index", 0) or 0), 0) + 1)
        n = len(IMAGES)
        self.pos = int(self.uid * GOLDEN * n) % n if n else 0

    @task
    def infer(self):
        if OPEN_LOOP:
            return self.open_loop()
        img = IMAGES[self.pos % len(IMAGES)]
        self.pos += 1
        self.request(img, None)

    def open_loop(self):
        """The scheduler: intended times from the arrival process at the current step's rate,
        each request handed to the pool (which blocks the scheduler while full)."""
        pool = gevent.pool.Pool(OPEN_LOOP["max_in_flight"])
        arrivals = ArrivalProcess(OPEN_LOOP["kind"], OPEN_LOOP["seed"])
        rates = OPEN_LOOP["rates"]
        next_ns = None
        while True:
            shape = _shape(_ENV.get("env"))
            step = shape.tracker.current if shape is not None and shape.tracker is not None else 0
            if step is None or step >= len(rates):
                gevent.sleep(0.05)
                next_ns = None
                continue
            rate = rates[step]
            if next_ns is None:
                next_ns = time.time_ns()
            next_ns += int(arrivals.gap_s(rate) * 1e9)
            delay = (next_ns - time.time_ns()) / 1e9
            if delay > 0:
                gevent.sleep(delay)
            st = OPEN_STATS.setdefault(step, {"rate": rate, "scheduled": 0, "slot_waits": 0})
            st["scheduled"] += 1
            if pool.full():
                st["slot_waits"] += 1
            img = IMAGES[self.pos % len(IMAGES)]
            self.pos += 1
            pool.spawn(self.request, img, next_ns)

    def request(self, img: "CorpusImage", intended_ns: int | None):
        rid = uuid.uuid4().hex
        send_ns = time.time_ns()
        intended_ns = send_ns if intended_ns is None else intended_ns
        with self.client.post(INFER_PATH, data=img.data, name=img.label, catch_response=True,
                              headers={"X-Request-ID": rid, "Content-Type": img.content_type}) as resp:
            recv_ns = time.time_ns()  # post() returns after the whole body has been read
            status = int(resp.status_code or 0)
            error, k = None, -1
            timing = (resp.headers.get("Server-Timing") if resp.headers else None) or ""
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
            RECORDS.append((rid, self.uid, img.name, img.size_class, len(img.data), intended_ns,
                            send_ns, recv_ns, status, error, timing, k))
            if error is None and COMPONENTS["on"] and timing:
                log_components(self.environment.stats, timing)
            if error is None:
                resp.success()
            else:
                resp.failure(error)


def log_components(stats, timing: str) -> None:
    """``detect-decode;dur=1.234, ...`` -> one sample per entry in the ``component`` stats entry of
    that name. Logged into the entries directly (``StatsEntry.log``), not through
    ``events.request``: Locust's total (the Aggregated row) then counts only /v1/infer requests."""
    for part in timing.split(","):
        name, _, rest = part.strip().partition(";")
        if not name or name == "total" or not rest.startswith("dur="):
            continue
        try:
            ms = float(rest[4:].split(";", 1)[0])
        except ValueError:
            continue
        stats.get(name, "component").log(ms, 0)


def _error_text(resp) -> str:
    try:
        body = json.loads(resp.content)
        return f"HTTP {resp.status_code} {body.get('error', '')}: {body.get('message', '')}"[:500]
    except Exception:
        text = (resp.content or b"")[:300].decode("utf-8", "replace")
        return f"HTTP {resp.status_code}: {text}"


# --- writing the run directory ---------------------------------------------------------------

def _run_dir(environment) -> RunDir | None:
    if isinstance(environment.runner, WorkerRunner):
        return None  # workers send their records to the master
    if ui_mode(environment):
        test = UI["test"]
        return test["run"] if test else None
    opts = environment.parsed_options
    d = getattr(opts, "overhead_run_dir", "") if opts else ""
    return RunDir(d) if d else None


def _shape(environment) -> StepShape | None:
    shape = environment.shape_class
    return shape if isinstance(shape, StepShape) else None


def write_records(environment) -> None:
    run = _run_dir(environment)
    if run is None:
        return
    n = len(RECORDS)
    if n != _written["requests"]:
        write_parquet_atomic(table_from_rows(list(RECORDS[:n]), REQUEST_COLUMNS), run.requests)
        _written["requests"] = n
    shape = _shape(environment)
    if shape is not None and shape.steps:
        rows = [(s["step"], s["users"], s["start_ns"], s["measure_start_ns"], s["end_ns"])
                for s in shape.finish()]
        write_parquet_atomic(table_from_rows(rows, STEP_COLUMNS), run.steps)
    elif ui_mode(environment) and UI["test"] is not None:
        write_ui_run(environment, run)
    if shape is not None and shape.tracker is not None:
        rule = STABILITY.get("rule")
        write_json_atomic({"rule": rule.to_dict() if rule else None,
                           "extend_up_to_s": (StepShape.stability or {}).get("max_seconds"),
                           "live_verdicts": {str(k): v for k, v in shape.tracker.verdicts.items()}},
                          run.locust / "stability.json")
    if OPEN_LOOP:
        write_json_atomic({**OPEN_LOOP, "steps": {str(k): v for k, v in OPEN_STATS.items()}},
                          run.locust / "openloop.json")


def write_final_stats(environment) -> None:
    run = _run_dir(environment)
    if run is None or environment.runner is None:
        return
    stats = environment.runner.stats
    by_name = {f"{e.method} {e.name}": {"requests": e.num_requests, "failures": e.num_failures}
               for e in stats.entries.values()}
    infer = [e for e in stats.entries.values() if e.name.startswith(INFER_PATH) and e.method != "component"]
    final = {"requests": stats.total.num_requests, "failures": stats.total.num_failures,
             "infer_requests": sum(e.num_requests for e in infer),
             "infer_failures": sum(e.num_failures for e in infer),
             "records": len(RECORDS), "by_name": by_name, "written_ns": time.time_ns()}
    if DIST["workers"]:
        final["records_by_worker"] = dict(DIST["workers"])
    write_json_atomic(final, run.locust_final)


def _progress_loop(environment) -> None:
    while True:
        run = _run_dir(environment)
        if run is None:
            gevent.sleep(1.0)
            continue
        shape = _shape(environment)
        stats = environment.runner.stats.total if environment.runner else None
        state = dict(time_ns=time.time_ns(), pid=os.getpid(), records=len(RECORDS),
                     requests=stats.num_requests if stats else 0,
                     failures=stats.num_failures if stats else 0,
                     user_count=environment.runner.user_count if environment.runner else 0)
        if shape is not None:
            state.update(shape.progress())
        try:
            write_json_atomic(state, run.locust_progress)
        except OSError:
            pass
        gevent.sleep(1.0)


_progress_greenlet = {"g": None}


@events.test_start.add_listener
def _on_test_start(environment, **_):
    runner = environment.runner
    if not ui_mode(environment):  # UI runs start their records at the first swarm
        del RECORDS[:]
        _written["requests"] = -1
    DIST["sent"] = 0
    if isinstance(runner, MasterRunner):
        DIST["workers"].clear()
    opts = environment.parsed_options
    if ui_mode(environment) and UI["test"] is None and getattr(opts, "autostart", False):
        ui_swarm(environment, int(getattr(opts, "num_users", 0) or 0),   # no /swarm request
                 float(getattr(opts, "spawn_rate", 0) or 0))
    if isinstance(runner, WorkerRunner):
        return
    if _progress_greenlet["g"] is None:
        _progress_greenlet["g"] = gevent.spawn(_progress_loop, environment)
    # Locust installs its SIGTERM handler only after a headless shape run has ended, so until then
    # SIGTERM would kill it on the spot and lose every record. Stop the run gracefully instead
    # (test_stop and quit then write the run directory); Locust's own handler replaces this later.
    if environment.parsed_options is not None and environment.parsed_options.headless:
        gevent.signal_handler(signal.SIGTERM, _graceful_quit, environment)


def _graceful_quit(environment) -> None:
    log.info("overhead: SIGTERM, stopping the test and writing the records")
    if isinstance(environment.runner, MasterRunner):
        environment.runner.stop()  # the workers send their records before they report stopped
    if environment.runner is not None:
        environment.runner.quit()


@events.test_stop.add_listener
def _on_test_stop(environment, **_):
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        send_records(runner)
        return
    if ui_mode(environment):
        if UI["test"] is None:
            return
        UI["test"]["stopped_ns"] = time.time_ns()
        write_records(environment)
        write_final_stats(environment)
        run = UI["test"]["run"]
        log.info("overhead: %d records written to %s", len(RECORDS), run.path)
        UI["test"] = None
        # the gateway flushes its spans every ~2 s: merge again once the last ones are on disk
        UI.setdefault("late", []).append(gevent.spawn_later(
            SPAN_FLUSH_WAIT_S, _late_spans, run, getattr(environment.parsed_options, "overhead_spans_dir", ""),
            [r[0] for r in RECORDS]))
        return
    write_records(environment)


@events.quit.add_listener
def _on_quit(**_):
    environment = _ENV.get("env")
    if environment is None:
        return
    g = _progress_greenlet["g"]
    if g is not None:
        g.kill(block=False)
    if isinstance(environment.runner, WorkerRunner):
        if len(RECORDS) > DIST["sent"]:
            send_records(environment.runner)
        return
    if ui_mode(environment):
        if UI["test"] is not None:  # quit while a test runs (test_stop may not have fired)
            _on_test_stop(environment)
        gevent.joinall(UI.get("late", []), timeout=SPAN_FLUSH_WAIT_S + 5)
        return
    write_records(environment)
    write_final_stats(environment)


# --- web UI runs: one run directory per test, one step per swarm ------------------------------

def _ui_after_request(response):
    """Flask hook on the web UI: a successful POST /swarm starts a step (and a test, if none runs)."""
    from flask import request

    try:
        if (request.method == "POST" and request.path.rstrip("/").endswith("/swarm")
                and response.status_code == 200 and (response.get_json(silent=True) or {}).get("success")):
            env = _ENV.get("env")
            if env is not None and env.shape_class is None:
                ui_swarm(env, int(request.form.get("user_count", 0) or 0),
                         float(request.form.get("spawn_rate", 0) or 0))
    except Exception:  # never break the UI for our bookkeeping
        log.exception("overhead: recording the swarm failed")
    return response


def _ui_run_path(opts) -> Path:
    base = getattr(opts, "overhead_run_dir", "") if opts else ""
    path = Path(base) if base else Path("runs") / f"ui-{time.strftime('%Y%m%d-%H%M%S')}"
    if base and UI["n"] > 1:
        path = Path(f"{base}-{UI['n']}")
    candidate, i = path, 1
    while (candidate / "requests.parquet").exists():  # never overwrite a run
        i += 1
        candidate = Path(f"{path}-{i}")
    return candidate


def _gateway_config(host: str | None) -> dict:
    if not host:
        return {"error": "no host"}
    import urllib.request

    try:
        with urllib.request.urlopen(host.rstrip("/") + "/v1/config", timeout=3) as r:
            return json.loads(r.read())
    except Exception as exc:
        return {"error": f"GET /v1/config failed: {type(exc).__name__}: {exc}"}


def ui_swarm(environment, users: int, spawn_rate: float) -> None:
    now = time.time_ns()
    test = UI["test"]
    if test is None:
        UI["n"] += 1
        run = RunDir(_ui_run_path(environment.parsed_options)).create()
        del RECORDS[:]
        _written["requests"] = -1
        test = UI["test"] = {"run": run, "steps": [], "started_ns": now, "host": environment.host,
                             "gateway": _gateway_config(environment.host)}
        log.info("overhead: web UI test %d records to %s", UI["n"], run.path)
    steps = test["steps"]
    if steps:
        steps[-1]["end_ns"] = now
    steps.append({"users": users, "spawn_rate": spawn_rate, "start_ns": now, "end_ns": None})


def write_ui_run(environment, run: RunDir) -> None:
    """steps.parquet, config.json, corpus.json and spans of the web UI test in progress."""
    import shutil

    test = UI["test"]
    opts = environment.parsed_options
    warmup_ns = int(float(getattr(opts, "overhead_warmup_seconds", 0) or 0) * 1e9)
    end = test.get("stopped_ns") or time.time_ns()
    rows = []
    for i, st in enumerate(test["steps"]):
        e = st["end_ns"] or end
        rows.append((i, st["users"], st["start_ns"], min(st["start_ns"] + warmup_ns, e), e))
    write_parquet_atomic(table_from_rows(rows, STEP_COLUMNS), run.steps)
    manifest = UI.get("manifest")
    if manifest and Path(manifest).exists() and Path(manifest).resolve() != run.corpus.resolve():
        shutil.copyfile(manifest, run.corpus)
    corpus = {}
    for img in IMAGES:
        d = corpus.setdefault(img.size_class, {"count": 0, "bytes": 0})
        d["count"] += 1
        d["bytes"] += len(img.data)
    spans = merge_ui_spans(run, getattr(opts, "overhead_spans_dir", "") or "")
    import locust

    config = {
        "run": {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(test["started_ns"] / 1e9)),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(end / 1e9)),
                "status": "complete" if test.get("stopped_ns") else "running", "mode": "locust web UI",
                "command": list(sys.argv), "cwd": os.getcwd(), "host": test["host"],
                "managed_gateway": False},
        "load": {"tool": "locust", "user_class": "FastHttpUser", "closed_loop": True,
                 "schedule": [{"users": r[1], "seconds": round((r[4] - r[2]) / 1e9, 3),
                               "spawn_rate": st["spawn_rate"]} for r, st in zip(rows, test["steps"])],
                 "warmup_seconds": warmup_ns / 1e9,
                 "sizes": sorted({i.size_class for i in IMAGES}),
                 "distributed_workers": len(DIST["workers"]) or None},
        "swarms": [dict(st) for st in test["steps"]],
        "steps": [dict(zip(("step", "users", "start_ns", "measure_start_ns", "end_ns"), r)) for r in rows],
        "gateway": test["gateway"],
        "corpus": {"images": len(IMAGES), "by_size": {
            s: {"count": d["count"], "mean_bytes": d["bytes"] / d["count"]} for s, d in corpus.items()}},
        "versions": {"python": sys.version.split()[0], "locust": locust.__version__},
        "counts": {"requests": len(RECORDS), "spans": spans},
        "spans_source": getattr(opts, "overhead_spans_dir", "") or None,
    }
    write_json_atomic(config, run.config)


SPAN_FLUSH_WAIT_S = 3.0


def _late_spans(run: RunDir, spans_dir: str, ids: list) -> None:
    try:
        n = merge_ui_spans(run, spans_dir, ids)
        config = json.loads(run.config.read_text())
        config.setdefault("counts", {})["spans"] = n
        config["spans_merged_ns"] = time.time_ns()
        write_json_atomic(config, run.config)
        log.info("overhead: %s spans merged into %s", n, run.path)
    except Exception:
        log.exception("overhead: merging spans into %s failed", run.path)


def merge_ui_spans(run: RunDir, spans_dir: str, ids: list | None = None) -> int | None:
    """With ``spans_dir`` (the gateway's --spans-dir, its parts left in place): (re)write
    spans.parquet with the spans of this run's requests found there (idempotent; parts the gateway
    wrote into RUN_DIR/spans stay parts, which the report reads too). Without: merge RUN_DIR/spans
    parts into spans.parquet. Returns the span count, or None when there are no spans at all."""
    from analysis.rundir import SPAN_COLUMNS, merge_span_parts

    if spans_dir and Path(spans_dir).is_dir() and Path(spans_dir).resolve() != run.spans_parts.resolve():
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        ids = pa.array([r[0] for r in RECORDS] if ids is None else ids, pa.string())
        tables = []
        for part in sorted(Path(spans_dir).glob("*.parquet")):
            try:
                t = pq.read_table(part).select([n for n, _ in SPAN_COLUMNS])
            except Exception as exc:  # a part being written right now
                log.warning("overhead: skipping spans part %s: %s", part, exc)
                continue
            t = t.filter(pc.is_in(t["request_id"], value_set=ids))
            if t.num_rows:
                tables.append(t.cast(pa.schema([(n, getattr(pa, ty)()) for n, ty in SPAN_COLUMNS])))
        table = pa.concat_tables(tables) if tables else None
        if table is not None:
            write_parquet_atomic(table, run.spans)
        return table.num_rows if table is not None else None
    if not run.spans.exists() and not any(run.spans_parts.glob("*.parquet")):
        return None
    return merge_span_parts(run.path)


# --- distributed: workers send their records to the master ------------------------------------

def send_records(runner) -> None:
    """Worker: send the records not sent yet to the master, in chunks (before Locust's
    ``client_stopped``, so the master has them all when its test_stop fires)."""
    n = len(RECORDS)
    rows = RECORDS[DIST["sent"]:n]
    chunks = [rows[i:i + CHUNK] for i in range(0, len(rows), CHUNK)] or [[]]
    for i, chunk in enumerate(chunks):
        runner.send_message(RECORDS_MSG, {"worker": runner.client_id,
                                          "index": getattr(runner, "worker_index", None),
                                          "rows": [list(r) for r in chunk],
                                          "last": i == len(chunks) - 1})
    DIST["sent"] = n
    log.info("overhead: sent %d records to the master", len(rows))


def _on_records_message(environment, msg, **_) -> None:
    """Master: collect a worker's records."""
    data = msg.data or {}
    rows = [tuple(r) for r in data.get("rows") or []]
    RECORDS.extend(rows)
    key = str(data.get("worker") or msg.node_id)
    DIST["workers"][key] = DIST["workers"].get(key, 0) + len(rows)
