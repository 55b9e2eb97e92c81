"""The "Overhead" tab of the Locust web UI: the run's headline breakdown while it runs.

What it shows, refreshed every few seconds while the tab is open: per size class the mean
end-to-end time of the successful requests so far and its critical-path components (the SAME
attribution as the report: ``analysis.report.live`` -> ``analysis.report.views.attribute_both``,
``backlog`` included, components plus ``other`` = the request's time), a stacked bar per size
class, validity so far (the current step's stability windows, the generator's CPU) and the run
directory's absolute path.

Where the spans come from: the gateway's span parquet parts (``--overhead-spans-dir``, the
gateway's ``--spans-dir``; parts in RUN_DIR/spans too), joined with this process's exact request
records. Not a per-request header: the critical path's ``backlog`` needs every worker's busy time
across requests, which no single answer carries, so only the spans give the report's numbers. The
newest requests join once the gateway has flushed their spans (~2 s).

The analysis runs in a child process (``python -m analysis.report.live --serve``, started on the
first refresh): this process is gevent-patched and its users must not wait on pandas. A refresh
runs only while someone asks (``GET /overhead/breakdown.json``, polled by the tab) and at most
every ``max(3 s, 5 x the last analysis)``, so the analysis stays a small share of a core.

Routes on the Locust web server: ``/overhead/breakdown.json`` (a list, one object per size class:
``size_class``, ``requests``, ``e2e_mean_ms``, ``components`` {name: mean ms, ..., ``other``}),
``/overhead/status.json`` (run directory, validity), ``/overhead/tab.js`` (the panel). The tab itself
is Locust's extension mechanism (``template_args["extended_tabs"]`` / ``extended_tables``, rows in
``/stats/requests``'s ``extended_stats``), the panel a script added to the index page.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import gevent

from loadtest.state import LoadState
from overhead.contract.records import RequestRecord
from overhead.contract.rundir import write_records
from overhead.contract.stability import assess

log = logging.getLogger("overhead.locustfile")

KEY = "overhead"
REPO = Path(__file__).resolve().parent.parent
STATIC = Path(__file__).resolve().parent / "static"
MIN_REFRESH_S = 3.0


@dataclass
class Live:
    """What the tab keeps: the last breakdown, the analysis child, the generator's CPU samples."""
    breakdown: list = field(default_factory=list)
    error: str = ""
    computed_at: float = 0.0
    compute_s: float = 0.0
    asked_at: float = 0.0
    busy: bool = False
    child: object = None
    snapshot: str = ""
    written: int = -1
    cpu: list = field(default_factory=list)     # (time_ns, locust_cpu_s, None)
    cpu_greenlet: object = None
    refreshing: object = None                   # the refresh greenlet


live = Live()


def cpu_samples(since_ns: int = 0, until_ns: int | None = None) -> list[tuple]:
    """This Locust process's CPU samples ``(time_ns, cpu_s, None)`` (``loadtest.cpu`` format)."""
    return [s for s in live.cpu if s[0] >= since_ns and (until_ns is None or s[0] <= until_ns)]


def _sample_cpu() -> None:
    import psutil

    me = psutil.Process()
    while True:
        t = me.cpu_times()
        live.cpu.append((time.time_ns(), t.user + t.system, None))
        del live.cpu[:-7200]   # two hours at 1 Hz
        gevent.sleep(1.0)


def start_cpu_sampling() -> None:
    if live.cpu_greenlet is None:
        live.cpu_greenlet = gevent.spawn(_sample_cpu)


def _sources(state: LoadState) -> list[str]:
    opts = state.env.parsed_options if state.env is not None else None
    out = []
    spans_dir = getattr(opts, "overhead_spans_dir", "") if opts else ""
    if spans_dir:
        out.append(str(Path(spans_dir).resolve()))
    run = current_run(state)
    if run is not None:
        out += [str(run.spans_parts.resolve()), str(run.spans.resolve())]
    return out


def current_run(state: LoadState):
    test = state.ui_test
    return test.run if test is not None else getattr(state, "last_ui_run", None)


def _child():
    from gevent import subprocess

    if live.child is None or live.child.poll() is not None:
        live.child = subprocess.Popen([sys.executable, "-m", "analysis.report.live", "--serve"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(REPO),
                                      text=True, bufsize=1)
    return live.child


def write_snapshot(records: list, n: int) -> None:
    """The records so far as parquet parts in a temp directory, each refresh writing only the
    records added since the last (writing is synchronous in this gevent process: every answer
    in flight meanwhile would be timestamped late, so the cost must not grow with the run)."""
    if not live.snapshot:
        live.snapshot = str(Path(tempfile.gettempdir()) / f"overhead-ui-live-{os.getpid()}")
    snap = Path(live.snapshot)
    if live.written < 0 or n < live.written:      # a new test: start over
        shutil.rmtree(snap, ignore_errors=True)
        live.written = 0
    if n > live.written:
        snap.mkdir(parents=True, exist_ok=True)
        write_records(records[live.written:n], RequestRecord, snap / f"part-{live.written:09d}.parquet")
        live.written = n


def refresh(state: LoadState) -> None:
    """Snapshot the records, ask the child for the breakdown (cooperatively), keep the answer."""
    t0 = time.monotonic()
    try:
        n = len(state.records)
        write_snapshot(state.records, n)
        if n == 0:
            live.breakdown, live.error = [], ""
            return
        child = _child()
        child.stdin.write(json.dumps([live.snapshot, *_sources(state)]) + "\n")
        child.stdin.flush()
        answer = json.loads(child.stdout.readline() or '{"error": "the analysis process ended"}')
        live.breakdown, live.error = answer.get("ok") or live.breakdown, answer.get("error", "")
    except Exception as exc:
        live.error = f"{type(exc).__name__}: {exc}"
        log.exception("overhead: the live breakdown failed")
    finally:
        live.compute_s = time.monotonic() - t0
        live.computed_at = time.monotonic()
        live.busy = False


def maybe_refresh(state: LoadState, wait_s: float = 0.0) -> None:
    """Start a refresh when the last is old enough; with nothing to show yet, wait up to
    ``wait_s`` for it (the tab's first poll then has numbers, not an empty answer)."""
    now = time.monotonic()
    live.asked_at = now
    if not live.busy and now - live.computed_at >= max(MIN_REFRESH_S, 5 * live.compute_s):
        live.busy = True
        live.refreshing = gevent.spawn(refresh, state)
    if wait_s > 0 and not live.breakdown and live.busy and live.refreshing is not None:
        live.refreshing.join(timeout=wait_s)


def reset_snapshot() -> None:
    """A new test (or segment): forget the last test's breakdown."""
    live.breakdown, live.error, live.written, live.computed_at = [], "", -1, 0.0


def validity(state: LoadState) -> dict:
    """The current step's stability windows (the sweep's rule) and the generator's CPU."""
    test = state.ui_test
    out: dict = {"step": None, "generator_cores": None}
    if test is not None and test.swarms:
        sw = test.swarms[-1]
        opts = state.env.parsed_options
        warm = int(float(getattr(opts, "overhead_warmup_seconds", 0) or 0) * 1e9)
        start, now = sw["start_ns"] + warm, time.time_ns()
        comp = [(r.recv_ns, r.latency_ms) for r in state.records if r.ok and r.recv_ns >= start]
        v = assess(comp, start, now, state.rule)
        out["step"] = {"users": sw["users"], "stable": v.stable, "enough_requests": v.enough_requests,
                       "requests": v.requests, "windows": len(v.windows), "valid": v.valid,
                       "reason": v.reason}
    recent = live.cpu[-6:]
    if len(recent) >= 2 and recent[-1][0] > recent[0][0]:
        out["generator_cores"] = round((recent[-1][1] - recent[0][1]) / ((recent[-1][0] - recent[0][0]) / 1e9), 3)
    return out


def status(state: LoadState) -> dict:
    run = current_run(state)
    return {"run_dir": str(run.path.resolve()) if run is not None else None,
            "running": state.ui_test is not None, "records": len(state.records),
            "error": live.error, "validity": validity(state),
            "refreshed_s_ago": round(time.monotonic() - live.computed_at, 1) if live.computed_at else None,
            "analysis_s": round(live.compute_s, 3)}


def table_rows() -> list[dict]:
    """The tab's table: one row per (size class, component), the request's mean first, then the
    components in the bars' order. ``name`` is not shown: Locust's table sorts by it by default,
    so it is the order key."""
    rows = []
    for b in live.breakdown:
        e2e = b["e2e_mean_ms"] or 1.0
        rows.append({"name": f"{b['size_class']} 000", "size": b["size_class"], "component": "request (mean)",
                     "ms": f"{b['e2e_mean_ms']:.2f}", "share": "100%", "requests": b["requests"]})
        for i, (name, ms) in enumerate(b["components"].items(), 1):
            rows.append({"name": f"{b['size_class']} {i:03d}", "size": b["size_class"], "component": name,
                         "ms": f"{ms:.2f}", "share": f"{100 * ms / e2e:.1f}%", "requests": b["requests"]})
    return rows


def install(state: LoadState, web_ui) -> None:
    """The tab, its routes and the panel script on Locust's Flask app."""
    from flask import Response, jsonify, request  # noqa: F401

    web_ui.template_args["extended_tabs"] = [{"title": "Overhead", "key": KEY}]
    web_ui.template_args["extended_tables"] = [{"key": KEY, "structure": [
        {"key": "size", "title": "Size class"}, {"key": "component", "title": "Component (critical path)"},
        {"key": "ms", "title": "Mean ms"}, {"key": "share", "title": "Share of request"},
        {"key": "requests", "title": "Requests"}]}]
    app = web_ui.app

    @app.route("/overhead/breakdown.json")
    def overhead_breakdown():
        maybe_refresh(state, wait_s=5.0)   # in the report's order (jsonify would sort them)
        return Response(json.dumps(live.breakdown), mimetype="application/json")

    @app.route("/overhead/status.json")
    def overhead_status():
        maybe_refresh(state)
        return jsonify(status(state))

    @app.route("/overhead/tab.js")
    def overhead_tab_js():
        return Response((STATIC / "overhead_tab.js").read_text(), mimetype="text/javascript")

    def after_request(response):
        try:
            if request.path == "/stats/requests" and response.is_json:
                body = response.get_json()
                body["extended_stats"] = [{"key": KEY, "data": table_rows()}]
                response.set_data(json.dumps(body))
            elif request.path == "/" and response.mimetype == "text/html" and not response.direct_passthrough:
                html = response.get_data(as_text=True)
                response.set_data(html.replace("</body>", '<script src="/overhead/tab.js"></script></body>', 1))
        except Exception:
            log.exception("overhead: extending the web UI failed")
        return response

    app.after_request(after_request)
    start_cpu_sampling()
    warm_up_writer()
    gevent.spawn(_child)   # its imports (pandas, ~2-3 s) now, not in the first refresh's time


def warm_up_writer() -> None:
    """Write (and delete) an empty records file now, before any test: the first write imports
    and initialises pyarrow and its parquet writer (0.5-1 s here, measured), which blocks gevent's
    loop; done by the first refresh mid-test, every answer in flight then was timestamped that
    much late and showed up as ``other`` (~1 s on the first requests of a 2-user run)."""
    with tempfile.TemporaryDirectory(prefix="overhead-ui-warm-") as d:
        write_records([], RequestRecord, Path(d) / "warm.parquet")


def close() -> None:
    """At quit: end the analysis child, remove the snapshot."""
    if live.child is not None and live.child.poll() is None:
        live.child.stdin.close()
        try:
            live.child.wait(timeout=5)
        except Exception:
            live.child.kill()
    if live.snapshot:
        shutil.rmtree(live.snapshot, ignore_errors=True)
