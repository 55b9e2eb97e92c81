"""The locustfile's per-request records: the live stability check on them, writing the run
directory (requests.parquet, steps.parquet, locust/*.json), and the distributed merge (each Locust
worker sends its records to the master, which writes the one run directory).

Every function takes the process's ``LoadState``. Records are ``overhead.contract.RequestRecord``
and are read by field name.
"""
from __future__ import annotations

import logging
import os
import time

import gevent
from locust.runners import MasterRunner, WorkerRunner

from loadtest import webui
from loadtest.shapes import StepShape
from loadtest.state import INFER_PATH, LoadState
from overhead.contract.records import RequestRecord, StepRecord, from_columns, to_columns
from overhead.contract.clock import now_ns as clock_ns, this_process
from overhead.contract.rundir import RunDir, write_json_atomic, write_processes, write_records
from overhead.contract.stability import assess

log = logging.getLogger("overhead.locustfile")

RECORDS_MSG = "overhead_records"
CHUNK = 5000


def run_dir(state: LoadState, environment) -> RunDir | None:
    """Where this process writes the run (None: nowhere, e.g. a Locust worker)."""
    if isinstance(environment.runner, WorkerRunner):
        return None  # workers send their records to the master
    if webui.ui_mode(environment):
        return state.ui_test.run if state.ui_test else None
    opts = environment.parsed_options
    d = getattr(opts, "overhead_run_dir", "") if opts else ""
    return RunDir(d) if d else None


def step_shape(environment) -> StepShape | None:
    shape = environment.shape_class if environment is not None else None
    return shape if isinstance(shape, StepShape) else None


def live_check(state: LoadState, row: dict, now_ns: int):
    """Stability verdict of the running step from the in-memory records (successful requests
    completed since the step's measured start; latency from the intended send time)."""
    start = row["measure_start_ns"]
    completions = []
    for rec in reversed(state.records):  # appended on completion: newest last
        if rec.recv_ns < start:
            break
        if rec.ok:
            completions.append((rec.recv_ns, rec.latency_ms))
    return assess(completions, start, now_ns, state.rule)


INCOMPLETE = "incomplete"


class Incomplete(Exception):
    """Locust's failure entry of a request given up without an answer."""


def give_up(state: LoadState, request_id: str, now_ns: int | None = None) -> bool:
    """Record a due or in-flight request as ``incomplete`` (status 0; ``recv_ns`` when it was given
    up, so its latency is how long it had waited) and count it in Locust's stats as a failure.
    False when it was recorded already (whoever pops it from ``in_flight`` records it)."""
    p = state.in_flight.pop(request_id, None)
    if p is None:
        return False
    now = clock_ns() if now_ns is None else now_ns
    img = p.image
    state.records.append(RequestRecord(
        request_id=p.request_id, user=p.user, image=img.name, size_class=img.size_class,
        bytes=len(img.data), intended_ns=p.intended_ns, send_ns=p.send_ns or now, recv_ns=now,
        status=0, error=INCOMPLETE, server_timing="", k=-1))
    env = state.env
    if env is not None and getattr(env, "events", None) is not None:
        env.events.request.fire(request_type="POST", name=img.label, response_length=0,
                                response_time=max(now - p.intended_ns, 0) / 1e6, context={},
                                exception=Incomplete(f"no answer after "
                                                     f"{(now - p.intended_ns) / 1e9:.1f} s"))
    return True


def give_up_step(state: LoadState, end_ns: int) -> int:
    """Open loop, when a step that is not the last ends (``StepShape.on_step_end``, at the moment
    the step's ``end_ns`` is stamped): the requests it made due (intended before ``end_ns``) and
    not answered yet become ``incomplete`` records of that step, waited until ``end_ns``; an
    answer that still comes is dropped, not recorded twice. (The last step's get
    ``--overhead-drain-seconds`` first, then ``give_up_in_flight``.)"""
    late = [rid for rid, p in list(state.in_flight.items()) if p.intended_ns < end_ns]
    n = sum(give_up(state, rid, end_ns) for rid in late)
    if n:
        log.info("overhead: %d requests still in flight when their step ended: incomplete", n)
    return n


def missed_its_step(state: LoadState, shape, step: int, p) -> bool:
    """Open loop: True (and ``p`` recorded ``incomplete``) when ``p`` was due in ``step`` but that
    step ended before the scheduler could send it (it woke late): the rule of ``give_up_step``."""
    rows = shape.tracker.rows if shape is not None and shape.tracker is not None else []
    end = rows[step]["end_ns"] if step < len(rows) else None
    return end is not None and p.intended_ns < end and give_up(state, p.request_id, end)


def give_up_in_flight(state: LoadState, now_ns: int | None = None) -> int:
    """At the end of the run: every request still due or in flight becomes an ``incomplete``
    record (the open-loop pool's greenlets are then stopped; their answers would come too late)."""
    n = sum(give_up(state, rid, now_ns) for rid in list(state.in_flight))
    if state.pool is not None:
        state.pool.kill(block=False)
    if n:
        log.info("overhead: %d requests still in flight at the end: recorded as incomplete", n)
    return n


def write_run(state: LoadState, environment) -> None:
    """requests.parquet (when there are new records; with this process's clock record in
    spans/_processes-<pid>.json), steps.parquet and the locust/*.json files."""
    run = run_dir(state, environment)
    if run is None:
        return
    n = len(state.records)
    if n != state.written:
        write_records(state.records[:n], RequestRecord, run.requests)
        write_processes([this_process()], run.spans_parts)   # whose clock send/recv_ns are on
        state.written = n
    shape = step_shape(environment)
    if shape is not None and shape.steps:
        write_records([StepRecord(**row) for row in shape.finish()], StepRecord, run.steps)
    elif webui.ui_mode(environment) and state.ui_test is not None:
        webui.write_ui_run(state, environment, run)
    if shape is not None and shape.tracker is not None:
        write_json_atomic({"rule": state.rule.to_dict(), "extend_up_to_s": state.extend_up_to_s,
                           "live_verdicts": {str(k): v for k, v in shape.tracker.verdicts.items()}},
                          run.locust_stability)
    if state.open_loop is not None:
        write_json_atomic({**state.open_loop.to_dict(),
                           "steps": {str(k): v for k, v in state.open_stats.items()}},
                          run.locust_openloop)


def write_final_stats(state: LoadState, environment) -> None:
    """locust/final_stats.json: Locust's own final counters (its _stats.csv can lag them)."""
    run = run_dir(state, environment)
    if run is None or environment.runner is None:
        return
    stats = environment.runner.stats
    entries = list(stats.entries.values())
    by_name = {f"{e.method} {e.name}": {"requests": e.num_requests, "failures": e.num_failures}
               for e in entries}
    infer = [e for e in entries if e.name.startswith(INFER_PATH) and e.method != "component"]
    final = {"requests": stats.total.num_requests, "failures": stats.total.num_failures,
             "infer_requests": sum(e.num_requests for e in infer),
             "infer_failures": sum(e.num_failures for e in infer),
             "records": len(state.records), "by_name": by_name, "written_ns": time.time_ns()}
    if state.by_worker:
        final["records_by_worker"] = dict(state.by_worker)
    write_json_atomic(final, run.locust_final)


def progress_loop(state: LoadState, environment) -> None:
    """locust/progress.json every second, for the sweep runner."""
    while True:
        run = run_dir(state, environment)
        if run is None:
            gevent.sleep(1.0)
            continue
        runner = environment.runner
        stats = runner.stats.total if runner else None
        progress = dict(time_ns=time.time_ns(), pid=os.getpid(), records=len(state.records),
                        requests=stats.num_requests if stats else 0,
                        failures=stats.num_failures if stats else 0,
                        user_count=runner.user_count if runner else 0)
        shape = step_shape(environment)
        if shape is not None:
            progress.update(shape.progress())
        try:
            write_json_atomic(progress, run.locust_progress)
        except OSError:
            pass
        gevent.sleep(1.0)


# --- distributed: workers send their records to the master ------------------------------------

def register_messages(state: LoadState, runner) -> None:
    if isinstance(runner, MasterRunner):
        runner.register_message(RECORDS_MSG, lambda environment, msg, **_: receive_records(state, msg))
    elif isinstance(runner, WorkerRunner):
        runner.register_message(RECORDS_MSG, lambda **_: None)


def send_records(state: LoadState, runner) -> None:
    """Worker: send the records not sent yet to the master, in chunks (before Locust's
    ``client_stopped``, so the master has them all when its test_stop fires). A chunk's records
    travel as named columns (``overhead.contract.records.to_columns``)."""
    n = len(state.records)
    rows = state.records[state.sent:n]
    chunks = [rows[i:i + CHUNK] for i in range(0, len(rows), CHUNK)] or [[]]
    for i, chunk in enumerate(chunks):
        runner.send_message(RECORDS_MSG, {"worker": runner.client_id,
                                          "index": getattr(runner, "worker_index", None),
                                          "columns": to_columns(chunk, RequestRecord),
                                          "last": i == len(chunks) - 1})
    state.sent = n
    log.info("overhead: sent %d records to the master", len(rows))


def receive_records(state: LoadState, msg) -> None:
    """Master: collect a worker's records."""
    data = msg.data or {}
    records = from_columns(RequestRecord, data.get("columns") or {})
    state.records.extend(records)
    key = str(data.get("worker") or msg.node_id)
    state.by_worker[key] = state.by_worker.get(key, 0) + len(records)
