import json
import threading
import time

import pyarrow.parquet as pq

from overhead.contract import clock
from overhead.contract.clock import ProcessRecord, process_id
from overhead.contract.records import Span, arrow_schema
from overhead.contract.rundir import merge_span_parts, read_processes, read_spans
from pipelines.spans import ComponentTimes, SpanFlusher, SpanRecorder, now_ns


def test_record_and_drain_keeps_order_and_attrs():
    rec = SpanRecorder()
    t = now_ns()
    rec.record("r1", "detect", "decode", t, t + 10, {"reduced": 4})
    rec.record("r1", "detect", "resize", t + 10, t + 25)
    spans = rec.drain()
    me = process_id()
    assert spans == [Span("r1", "detect", "decode", t, t + 10, '{"reduced":4}', me),
                     Span("r1", "detect", "resize", t + 10, t + 25, None, me)]
    assert rec.drain() == []


def test_disabled_recorder_records_nothing():
    rec = SpanRecorder(enabled=False)
    rec.record("r1", "detect", "decode", 1, 2)
    rec.extend([Span("r", "s", "c", 1, 2, None)])
    assert len(rec) == 0


def test_concurrent_appends_are_not_lost_while_draining(tmp_path):
    rec = SpanRecorder()
    flusher = SpanFlusher(rec, tmp_path / "spans", interval_s=0.01).start()
    n_threads, per_thread = 4, 5000

    def work(i):
        for j in range(per_thread):
            rec.record(f"r{i}-{j}", "detect", "inference", j, j + 1, {"crop": j})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    flusher.stop()
    parts = sorted((tmp_path / "spans").glob("*.parquet"))
    assert parts, "flusher wrote no parquet part"
    table = pq.read_table(tmp_path / "spans")
    assert table.num_rows == n_threads * per_thread
    assert table.schema.equals(arrow_schema(Span))
    assert len(set(table.column("request_id").to_pylist())) == n_threads * per_thread


def test_server_timing_header_sums_per_stage_component():
    ct = ComponentTimes.new()
    ct.add("detect", "decode", 1_500_000)
    ct.add("classify", "inference", 2_000_000)
    ct.add("classify", "inference", 1_000_000)
    assert ct.server_timing() == "detect-decode;dur=1.500, classify-inference;dur=3.000"


def test_extend_and_table_round_trip():
    rec = SpanRecorder()
    spans = [Span("r", "classify", "queue", 1, 2, None), Span("r", "classify", "inference", 2, 5, '{"batch":2}')]
    rec.extend(spans)
    assert rec.drain_table().to_pylist() == [
        {"request_id": s.request_id, "stage": s.stage, "component": s.component,
         "start_ns": s.start_ns, "end_ns": s.end_ns, "attrs": s.attrs, "process": process_id()}
        for s in spans]


def test_the_span_clock_is_monotonic_when_the_wall_clock_steps(monkeypatch):
    """A wall-clock step mid-run (NTP stepping it) moves time.time_ns but not the spans' clock:
    durations are monotonic differences, placement keeps the wall clock read at start."""
    t0, m0 = now_ns(), time.monotonic_ns()
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() + 3_600_000_000_000)   # +1 h step
    time.sleep(0.01)
    t1, m1 = now_ns(), time.monotonic_ns()
    assert abs((t1 - t0) - (m1 - m0)) < 1_000_000       # no hour in a 10 ms span
    assert abs(t1 - real()) < 1_000_000_000             # still on the wall clock of the start
    me = clock.this_process()
    assert me.process == process_id() == f"{me.host}:{me.pid}"
    assert ProcessRecord.from_wire(me.to_wire()) == me


def test_flusher_writes_the_processes_and_the_merge_keeps_them(tmp_path):
    """Spans say whose clock stamped them; processes.json says when each process started (wall
    and monotonic) — its own and the workers' whose spans it recorded (from result headers)."""
    rec = SpanRecorder()
    other = ProcessRecord("hostB:42", "hostB", 42, "worker", 1_000, 5)
    rec.add_process(other)
    rec.record("r1", "classify", "inference", 10, 20, {"crop": 0}, process=other.process)
    rec.record("r1", "detect", "decode", 1, 5)
    flusher = SpanFlusher(rec, tmp_path / "spans", interval_s=60).start()
    flusher.stop()
    procs = read_processes(tmp_path)
    assert procs["hostB:42"] == other.to_dict()
    assert procs[process_id()]["pid"] == clock.this_process().pid
    assert merge_span_parts(tmp_path) == 2
    assert not list((tmp_path / "spans").glob("_processes-*.json"))
    assert set(json.loads((tmp_path / "processes.json").read_text())[i]["process"]
               for i in range(2)) == {"hostB:42", process_id()}
    assert sorted(read_spans(tmp_path)["process"]) == sorted(["hostB:42", process_id()])


def test_spans_written_before_the_process_column_still_read(tmp_path):
    import pyarrow as pa

    old = pa.table({"request_id": ["r"], "stage": ["detect"], "component": ["decode"],
                    "start_ns": [1], "end_ns": [2], "attrs": [None]},
                   schema=pa.schema([("request_id", pa.string()), ("stage", pa.string()),
                                     ("component", pa.string()), ("start_ns", pa.int64()),
                                     ("end_ns", pa.int64()), ("attrs", pa.string())]))
    pq.write_table(old, tmp_path / "spans.parquet")
    df = read_spans(tmp_path)
    assert len(df) == 1 and df["process"].isna().all()
    assert read_processes(tmp_path) == {}
