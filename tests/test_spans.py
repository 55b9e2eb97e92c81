import threading

import pyarrow.parquet as pq

from overhead.contract.records import Span, arrow_schema
from pipelines.spans import ComponentTimes, SpanFlusher, SpanRecorder, now_ns


def test_record_and_drain_keeps_order_and_attrs():
    rec = SpanRecorder()
    t = now_ns()
    rec.record("r1", "detect", "decode", t, t + 10, {"reduced": 4})
    rec.record("r1", "detect", "resize", t + 10, t + 25)
    spans = rec.drain()
    assert spans == [Span("r1", "detect", "decode", t, t + 10, '{"reduced":4}'),
                     Span("r1", "detect", "resize", t + 10, t + 25, None)]
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
         "start_ns": s.start_ns, "end_ns": s.end_ns, "attrs": s.attrs} for s in spans]
