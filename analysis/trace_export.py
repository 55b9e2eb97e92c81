"""Request timelines: a run directory as Chrome trace-event JSON (Perfetto, chrome://tracing).

    python analysis/trace_export.py RUN_DIR [--slowest N] [--group step|size] [--out FILE]

One process (pid) per load step (or per image size class with ``--group size``), one track
(thread) per request, named by its request id, size class and e2e. On the track: a complete event
(``"ph": "X"``) ``e2e`` for the client's end-to-end time (from the intended send time: with
open-loop load that includes the schedule lag, shown as its own ``client-schedule_lag`` event)
and one complete event per span, named ``stage-component``, with the span's attrs as ``args``.
``ts``/``dur`` are microseconds (floats, ns precision) from the first exported request.
Faults injected by the sweep (config.json ``faults``, ``--fault``) are a global instant event
(a line across every track) at the moment each struck, plus a ``faults`` track with one slice
per fault from the strike to its piece being back.

The trace-event format needs the events of one track to nest properly. Spans that overlap
without nesting (k crops classified at once) go to extra tracks of the same request
("<id> lane 2", ...), sorted right under it. ``--slowest N`` keeps the N requests with the
largest e2e (default: all; big runs make big files). Default output: RUN_DIR/trace.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from overhead.contract.runconfig import read_config
from overhead.contract.rundir import RunDir, read_requests, read_spans, read_steps

NS_PER_US = 1000.0


def _us(ns: int, t0: int) -> float:
    return (int(ns) - t0) / NS_PER_US


def _lanes(root: tuple[int, int], intervals: list[tuple[int, int]]) -> list[int]:
    """Lane of each interval so that the intervals of one lane nest properly or are disjoint;
    lane 0 holds ``root`` (the e2e event). ``intervals`` must be sorted by (start, -end)."""
    stacks: list[list[int]] = [[root[1]]]  # per lane: ends of the open (enclosing) intervals
    first_start = [root[0]]
    out = []
    for s, e in intervals:
        for lane, stack in enumerate(stacks):
            if lane == 0 and s < first_start[0]:
                continue                      # starts before the request: not inside e2e
            while stack and stack[-1] <= s:
                stack.pop()
            if not stack or e <= stack[-1]:
                if lane == 0 and not stack:
                    continue                  # after the e2e event closed: keep lane 0 for e2e
                stack.append(e)
                out.append(lane)
                break
        else:
            stacks.append([e])
            first_start.append(s)
            out.append(len(stacks) - 1)
    return out


def _step_of(req: pd.DataFrame, steps: pd.DataFrame) -> np.ndarray:
    """Step of each request by its completion time within [start_ns, end_ns) (warm-up included);
    -1 outside every step."""
    out = np.full(len(req), -1, np.int64)
    recv = req["recv_ns"].to_numpy(np.int64)
    for row in steps.itertuples():
        out[(recv >= row.start_ns) & (recv < row.end_ns)] = row.step
    return out


def build_trace(run_dir, slowest: int | None = None, group: str = "step") -> dict:
    """The trace-event JSON object (``{"traceEvents": [...], ...}``) of a run directory."""
    run = RunDir(run_dir)
    if not run.requests.exists():
        raise FileNotFoundError(f"{run.requests} not found: is {run.path} a run directory?")
    steps = read_steps(run.path)
    req = _requests(run, steps, slowest)
    t0 = int(req["start_ns"].min()) if len(req) else 0
    config = read_config(run.path)
    group_of = _grouper(req, steps, (config.get("load") or {}).get("rates"), group)
    spans = read_spans(run.path)
    by_req = {rid: g for rid, g in spans.groupby("request_id")} if len(spans) else {}
    events: list[dict] = []
    named_pids: set[int] = set()
    tid = 0
    for order, r in enumerate(req.itertuples(index=False)):
        pid, pname = group_of(r)
        if pid not in named_pids:
            named_pids.add(pid)
            events.append(dict(ph="M", name="process_name", pid=pid, tid=0, args={"name": pname}))
            events.append(dict(ph="M", name="process_sort_index", pid=pid, tid=0, args={"sort_index": pid}))
        tid += _request_events(events, r, by_req.get(r.request_id), pid, tid + 1, order, t0)
    events += fault_events(config.get("faults") or [], t0)
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"run_dir": str(run.path), "requests": int(len(req)), "t0_ns": t0,
                          "slowest": slowest, "group": group,
                          "note": "ts/dur in microseconds from t0_ns (time.time_ns of the first request)"}}


FAULT_PID = 999_999


def fault_events(faults: list[dict], t0: int) -> list[dict]:
    """Each struck fault: a global instant event, and a slice on the ``faults`` track covering
    strike -> recovery (to the strike alone when it never recovered)."""
    out: list[dict] = []
    for f in faults:
        if not f.get("time_ns"):
            continue
        name = f"fault: {f['kind']} {f.get('target') or ''}".strip()
        args = {k: f.get(k) for k in ("kind", "target", "at_s", "recovered_ns", "error")}
        out.append(dict(ph="i", s="g", name=name, pid=FAULT_PID, tid=1, ts=_us(f["time_ns"], t0),
                        args=args))
        end = f.get("recovered_ns") or f["time_ns"]
        out.append(dict(ph="X", name=name, cat="fault", pid=FAULT_PID, tid=1,
                        ts=_us(f["time_ns"], t0), dur=(int(end) - int(f["time_ns"])) / NS_PER_US,
                        args=args))
    if out:
        out[:0] = [dict(ph="M", name="process_name", pid=FAULT_PID, tid=0, args={"name": "faults"}),
                   dict(ph="M", name="process_sort_index", pid=FAULT_PID, tid=0,
                        args={"sort_index": -1})]
    return out


def _requests(run: RunDir, steps: pd.DataFrame, slowest: int | None) -> pd.DataFrame:
    """The requests to export, sorted by start (the intended send time when earlier than the
    real one), with ``start_ns``, ``e2e_ns`` and ``step``."""
    req = read_requests(run.path).drop_duplicates("request_id").reset_index(drop=True)
    intended = req["intended_ns"].fillna(req["send_ns"]).astype(np.int64)
    req["start_ns"] = np.minimum(intended, req["send_ns"].astype(np.int64))
    req["e2e_ns"] = req["recv_ns"].astype(np.int64) - req["start_ns"]
    req["step"] = _step_of(req, steps) if len(steps) else 0
    if slowest is not None and slowest >= 0:
        req = req.nlargest(slowest, "e2e_ns", keep="first")
    return req.sort_values("start_ns").reset_index(drop=True)


def _grouper(req: pd.DataFrame, steps: pd.DataFrame, rates: list | None, group: str):
    """request row -> (pid, process name): its step (or size class with ``group="size"``)."""
    users = dict(zip(steps["step"], steps["users"])) if len(steps) else {}
    sizes = sorted(req["size_class"].dropna().unique().tolist())

    def group_of(r) -> tuple[int, str]:
        if group == "size":
            return (sizes.index(r.size_class) + 1 if r.size_class in sizes else 0, f"size {r.size_class}")
        st = int(r.step)
        if st < 0:
            return 0, "outside the steps"
        if rates and st < len(rates):
            return st + 1, f"step {st}: {rates[st]:g} req/s (open loop)"
        return st + 1, f"step {st}: {users.get(st, '?')} users"
    return group_of


def _span_items(r, g: pd.DataFrame | None) -> list[tuple[int, int, str, str, dict]]:
    """(start, end, name, category, args) of a request's schedule lag and spans, sorted by
    (start, -end)."""
    start, send = int(r.start_ns), int(r.send_ns)
    items: list[tuple[int, int, str, str, dict]] = []
    if send > start:
        items.append((start, send, "client-schedule_lag", "client",
                      {"request_id": r.request_id, "note": "intended send → actual send"}))
    for s in g.itertuples(index=False) if g is not None else ():
        try:
            attrs = json.loads(s.attrs) if isinstance(s.attrs, str) and s.attrs else {}
        except ValueError:
            attrs = {"attrs": s.attrs}
        if not isinstance(attrs, dict):
            attrs = {"attrs": attrs}
        attrs["request_id"] = r.request_id
        if getattr(s, "process", None):
            attrs["process"] = s.process            # HOST:PID whose clock stamped it
        items.append((int(s.start_ns), max(int(s.end_ns), int(s.start_ns)),
                      f"{s.stage}-{s.component}", str(s.stage), attrs))
    items.sort(key=lambda it: (it[0], -it[1]))
    return items


def _request_events(events: list[dict], r, g, pid: int, base_tid: int, order: int, t0: int) -> int:
    """Append one request's track names and events (e2e, lag, spans); return its track count."""
    start, send, recv = int(r.start_ns), int(r.send_ns), int(r.recv_ns)
    label = f"{r.request_id[:8]} {r.size_class} {(recv - start) / 1e6:.1f} ms"
    if int(r.status) != 200 or isinstance(r.error, str):
        label += f" FAILED ({r.status})"
    e2e_args = dict(request_id=r.request_id, image=r.image, size_class=r.size_class,
                    bytes=int(r.bytes), user=int(r.user), status=int(r.status), k=int(r.k),
                    error=r.error if isinstance(r.error, str) else None,
                    intended_ns=int(r.intended_ns), send_ns=send, recv_ns=recv,
                    schedule_lag_ms=(send - int(r.intended_ns)) / 1e6,
                    server_timing=r.server_timing)
    evs = [dict(ph="X", name="e2e", cat="client", pid=pid, tid=base_tid,
                ts=_us(start, t0), dur=(recv - start) / NS_PER_US, args=e2e_args)]
    items = _span_items(r, g)
    lanes = _lanes((start, recv), [(a, b) for a, b, *_ in items])
    for (a, b, name, cat, args), lane in zip(items, lanes):
        evs.append(dict(ph="X", name=name, cat=cat, pid=pid, tid=base_tid + lane,
                        ts=_us(a, t0), dur=(b - a) / NS_PER_US, args=args))
    n_lanes = 1 + max(lanes, default=0)
    for lane in range(n_lanes):
        events.append(dict(ph="M", name="thread_name", pid=pid, tid=base_tid + lane,
                           args={"name": label if lane == 0 else f"{r.request_id[:8]} lane {lane + 1}"}))
        events.append(dict(ph="M", name="thread_sort_index", pid=pid, tid=base_tid + lane,
                           args={"sort_index": order * 100 + lane}))
    events.extend(evs)
    return n_lanes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="analysis/trace_export.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a run directory written by loadtest/sweep.py")
    ap.add_argument("--slowest", type=int, default=None, metavar="N",
                    help="export only the N requests with the largest end-to-end latency")
    ap.add_argument("--group", choices=("step", "size"), default="step",
                    help="one process per load step (default) or per image size class")
    ap.add_argument("--out", default=None, help="output file (default RUN_DIR/trace.json)")
    args = ap.parse_args(argv)
    try:
        trace = build_trace(args.run_dir, args.slowest, args.group)
    except FileNotFoundError as exc:
        print(f"trace_export: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.run_dir) / "trace.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(trace, separators=(",", ":"), default=str))
    n = trace["otherData"]["requests"]
    print(f"{out}  ({n} requests, {len(trace['traceEvents'])} events; open in https://ui.perfetto.dev "
          f"or chrome://tracing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
