"""Web UI runs (``locust -f loadtest/locustfile.py --host URL``, no ``--headless``): every test gets
its own run directory (``--overhead-run-dir``, else ``runs/ui-<time>``; a second test in the same
process gets ``DIR-2``, ...), one step per swarm, a config.json (``RunConfig``) saying what ran, and
the gateway's spans of this test's requests.

A Reset (Locust's "Reset stats") starts a new **segment** of the test: its time and the records
before it go to config.json (``resets``), so the report compares Locust's count (which
restarted at the Reset) with the records since the last Reset. The Locust process's CPU is sampled
every second (``loadtest.overhead_tab``) and written like the sweep's (cpu.parquet,
``load_generator_cpu`` per step). Temporary files (the built corpus manifest, the live tab's
snapshot) are removed at exit.

Every function takes the process's ``LoadState``.
"""
from __future__ import annotations

import dataclasses
import atexit
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gevent
from locust.runners import WorkerRunner

from loadtest import overhead_tab
from loadtest.cpu import write_cpu_tables
from loadtest.state import LoadState, UITest
from overhead.contract.records import Span, StepRecord, arrow_schema, select_columns
from overhead.contract.runconfig import (
    LoadConfig, RunConfig, RunInfo, read_run_config, write_config,
)
from overhead.contract.rundir import (
    RunDir, merge_span_parts, process_files, read_process_files, write_json_atomic,
    write_parquet_atomic, write_records,
)

log = logging.getLogger("overhead.locustfile")

REPO = Path(__file__).resolve().parent.parent
SPAN_FLUSH_WAIT_S = 3.0   # the gateway flushes its spans every ~2 s


def ui_mode(environment) -> bool:
    """Driven from the web UI: not headless, not a worker (a master with a UI counts)."""
    opts = environment.parsed_options
    return bool(opts is not None and not getattr(opts, "headless", False)
                and not isinstance(environment.runner, WorkerRunner))


def default_manifest(sizes: str = "") -> str:
    """Build (or reuse from the cache) the corpus in a subprocess (this process must not import
    OpenCV) and return the path of a manifest for it."""
    out = Path(tempfile.gettempdir()) / f"overhead-ui-corpus-{os.getpid()}.json"
    code = ("import sys; from pathlib import Path; from overhead.contract.rundir import RunDir; "
            "from loadtest.sweep import corpus_manifest; import shutil, tempfile; "
            "d = Path(tempfile.mkdtemp()); corpus_manifest(RunDir(d), [s for s in sys.argv[2].split(',') if s], None); "
            "shutil.move(str(d / 'corpus.json'), sys.argv[1])")
    log.info("overhead: no corpus manifest given; building the cached corpus into %s", out)
    atexit.register(out.unlink, missing_ok=True)
    subprocess.run([sys.executable, "-c", code, str(out), sizes], cwd=str(REPO), check=True,
                   timeout=600)
    return str(out)


def install_swarm_hook(state: LoadState, web_ui) -> None:
    """Flask hook on the web UI: a successful POST /swarm starts a step (and a test, if none runs)."""
    def after_request(response):
        from flask import request

        try:
            if (request.method == "POST" and request.path.rstrip("/").endswith("/swarm")
                    and response.status_code == 200
                    and (response.get_json(silent=True) or {}).get("success")):
                env = state.env
                if env is not None and env.shape_class is None:
                    ui_swarm(state, env, int(request.form.get("user_count", 0) or 0),
                             float(request.form.get("spawn_rate", 0) or 0))
        except Exception:  # never break the UI for our bookkeeping
            log.exception("overhead: recording the swarm failed")
        return response

    web_ui.app.after_request(after_request)
    overhead_tab.install(state, web_ui)
    atexit.register(overhead_tab.close)
    state.env.events.reset_stats.add_listener(lambda **_: reset(state))


def reset(state: LoadState) -> None:
    """Locust's "Reset stats": a new segment of the test in progress (see the module doc)."""
    test = state.ui_test
    if test is not None:
        test.resets.append({"time_ns": time.time_ns(), "records_before": len(state.records)})
        log.info("overhead: stats reset; segment %d of %s starts", len(test.resets) + 1, test.run.path)


def _run_path(state: LoadState, opts) -> Path:
    base = getattr(opts, "overhead_run_dir", "") if opts else ""
    path = Path(base) if base else Path("runs") / f"ui-{time.strftime('%Y%m%d-%H%M%S')}"
    if base and state.ui_tests > 1:
        path = Path(f"{base}-{state.ui_tests}")
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


def ui_swarm(state: LoadState, environment, users: int, spawn_rate: float) -> None:
    """A swarm: the next step of the test in progress, or the first step of a new test."""
    now = time.time_ns()
    test = state.ui_test
    if test is None:
        state.ui_tests += 1
        run = RunDir(_run_path(state, environment.parsed_options)).create()
        state.reset_records()
        test = state.ui_test = UITest(run=run, started_ns=now, host=environment.host,
                                      gateway=_gateway_config(environment.host))
        overhead_tab.reset_snapshot()
        log.info("overhead: web UI test %d records to %s", state.ui_tests, run.path.resolve())
    if test.swarms:
        test.swarms[-1]["end_ns"] = now
    test.swarms.append({"users": users, "spawn_rate": spawn_rate, "start_ns": now, "end_ns": None})


def stop_test(state: LoadState, environment, write) -> None:
    """The UI test ends: ``write()`` the run, then merge the late spans once they are on disk."""
    test = state.ui_test
    if test is None:
        return
    test.stopped_ns = time.time_ns()
    write()
    log.info("overhead: %d records written to %s", len(state.records), test.run.path.resolve())
    state.ui_test = None
    state.last_ui_run = test.run   # the Overhead tab keeps showing it
    spans_dir = getattr(environment.parsed_options, "overhead_spans_dir", "")
    state.late.append(gevent.spawn_later(SPAN_FLUSH_WAIT_S, _late_spans, test.run, spans_dir,
                                         [r.request_id for r in state.records]))


def _steps(test: UITest, warmup_ns: int, end_ns: int) -> list[StepRecord]:
    out = []
    for i, swarm in enumerate(test.swarms):
        e = swarm["end_ns"] or end_ns
        out.append(StepRecord(step=i, users=swarm["users"], start_ns=swarm["start_ns"],
                              measure_start_ns=min(swarm["start_ns"] + warmup_ns, e), end_ns=e))
    return out


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ns / 1e9))


def write_ui_run(state: LoadState, environment, run: RunDir) -> None:
    """steps.parquet, config.json, corpus.json and spans of the web UI test in progress."""
    import locust

    test = state.ui_test
    opts = environment.parsed_options
    warmup_ns = int(float(getattr(opts, "overhead_warmup_seconds", 0) or 0) * 1e9)
    end = test.stopped_ns or time.time_ns()
    steps = _steps(test, warmup_ns, end)
    write_records(steps, StepRecord, run.steps)
    manifest = state.manifest
    if manifest and Path(manifest).exists() and Path(manifest).resolve() != run.corpus.resolve():
        shutil.copyfile(manifest, run.corpus)
    corpus: dict[str, dict] = {}
    for img in state.images:
        d = corpus.setdefault(img.size_class, {"count": 0, "bytes": 0})
        d["count"] += 1
        d["bytes"] += len(img.data)
    spans_dir = getattr(opts, "overhead_spans_dir", "") or None
    spans = merge_ui_spans(state, run, spans_dir or "")
    step_rows = [dataclasses.asdict(st) for st in steps]
    generator_cpu, _ = write_cpu_tables(run, overhead_tab.cpu_samples(test.started_ns - int(2e9)),
                                        [], step_rows)
    config = RunConfig(
        run=RunInfo(started=_iso(test.started_ns), finished=_iso(end),
                    status="complete" if test.stopped_ns else "running", mode="locust web UI",
                    command=list(sys.argv), cwd=os.getcwd(), host=test.host, managed_gateway=False),
        load=LoadConfig(tool="locust", user_class="FastHttpUser", closed_loop=True,
                        schedule=[{"users": st.users, "seconds": round((st.end_ns - st.start_ns) / 1e9, 3),
                                   "spawn_rate": sw["spawn_rate"]} for st, sw in zip(steps, test.swarms)],
                        warmup_seconds=warmup_ns / 1e9, sizes=state.size_classes(),
                        distributed_workers=len(state.by_worker) or None),
        swarms=[dict(sw) for sw in test.swarms],
        steps=step_rows,
        load_generator_cpu=generator_cpu or None,
        extra={"resets": list(test.resets)} if test.resets else {},
        gateway=test.gateway,
        corpus={"images": len(state.images), "by_size": {
            s: {"count": d["count"], "mean_bytes": d["bytes"] / d["count"]} for s, d in corpus.items()}},
        versions={"python": sys.version.split()[0], "locust": locust.__version__},
        counts={"requests": len(state.records), "spans": spans},
        spans_source=spans_dir)
    write_config(run.path, config)


def _late_spans(run: RunDir, spans_dir: str, ids: list) -> None:
    try:
        n = merge_ui_spans(None, run, spans_dir, ids)
        config = read_run_config(run.path)
        config.counts = {**(config.counts or {}), "spans": n}
        config.spans_merged_ns = time.time_ns()
        write_config(run.path, config)
        log.info("overhead: %s spans merged into %s", n, run.path)
    except Exception:
        log.exception("overhead: merging spans into %s failed", run.path)


def merge_ui_spans(state: LoadState | None, run: RunDir, spans_dir: str,
                   ids: list | None = None) -> int | None:
    """With ``spans_dir`` (the gateway's --spans-dir, its parts left in place): (re)write
    spans.parquet with the spans of this run's requests (``ids``, default the state's records)
    found there (idempotent; parts the gateway wrote into RUN_DIR/spans stay parts, which the
    report reads too). Without: merge RUN_DIR/spans parts into spans.parquet. Returns the span
    count, or None when there are no spans at all."""
    if spans_dir and Path(spans_dir).is_dir() and Path(spans_dir).resolve() != run.spans_parts.resolve():
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        ids = pa.array([r.request_id for r in state.records] if ids is None else ids, pa.string())
        tables = []
        for part in sorted(Path(spans_dir).glob("*.parquet")):
            try:
                t = select_columns(pq.read_table(part), Span)
            except Exception as exc:  # a part being written right now
                log.warning("overhead: skipping spans part %s: %s", part, exc)
                continue
            t = t.filter(pc.is_in(t["request_id"], value_set=ids))
            if t.num_rows:
                tables.append(t.cast(arrow_schema(Span)))
        table = pa.concat_tables(tables) if tables else None
        if table is not None:
            write_parquet_atomic(table, run.spans)
        procs = read_process_files([run.processes, *process_files(run.spans_parts),
                                    *process_files(spans_dir)])
        if procs:   # whose clocks stamped them (the gateway's and its workers')
            write_json_atomic(list(procs.values()), run.processes)
        return table.num_rows if table is not None else None
    if not run.spans.exists() and not any(run.spans_parts.glob("*.parquet")):
        return None
    return merge_span_parts(run.path)
