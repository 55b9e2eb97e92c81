"""overhead/contract: records round-trip through their one Arrow schema, config.json through
RunConfig, and the contract imports nothing from the project."""
from __future__ import annotations

import ast
import dataclasses
import json
import typing
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from brokers.message import Message, decode_message, encode_message
from overhead.contract.records import (
    COMPONENTS, STAGES, RequestRecord, Span, StepRecord, arrow_schema, field_names, from_columns,
    from_table, rows_to_table, to_columns, to_table, wire_span,
)
from overhead.contract.runconfig import RunConfig, read_config, read_run_config, update_config, write_config
from overhead.contract.rundir import RunDir, read_requests, read_spans, read_steps, write_records

CONTRACT = Path(__file__).resolve().parent.parent / "overhead" / "contract"

SAMPLES = {
    Span: [Span("r1", "detect", "decode", 10, 20, '{"reduced":4}'),
           Span("r1", "classify", "inference", 30, 45, None)],
    RequestRecord: [RequestRecord("r1", 0, "china", "1MP", 150_000, 1, 2, 99, 200, None,
                                  "detect-decode;dur=1.000", 2),
                    RequestRecord("r2", 3, "flower", "8MP", 900_000, 5, 6, 7, 0,
                                  "ConnectionRefusedError: nope", "", -1)],
    StepRecord: [StepRecord(0, 1, 100, 150, 200), StepRecord(1, 2, 200, 250, 300)],
}
TYPES = {str: "string", int: "int64"}


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_schema_is_the_dataclass_fields_in_order(cls):
    schema = arrow_schema(cls)
    assert schema.names == [f.name for f in dataclasses.fields(cls)] == list(field_names(cls))
    hints = typing.get_type_hints(cls)
    for f in schema:
        base = next(t for t in (typing.get_args(hints[f.name]) or (hints[f.name],)) if t is not type(None))
        assert str(f.type) == TYPES[base], f.name
    assert arrow_schema(cls) is schema   # defined once


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_records_round_trip_through_arrow_parquet_and_columns(cls, tmp_path):
    recs = SAMPLES[cls]
    table = to_table(recs, cls)
    assert table.schema.equals(arrow_schema(cls))
    assert from_table(cls, table) == recs
    assert from_columns(cls, to_columns(recs, cls)) == recs
    assert from_columns(cls, to_columns([], cls)) == []
    rows = [tuple(getattr(r, n) for n in field_names(cls)) for r in recs]
    assert rows_to_table(cls, rows).equals(table)
    write_records(recs, cls, tmp_path / "t.parquet")
    assert from_table(cls, pq.read_table(tmp_path / "t.parquet")) == recs
    assert to_table([], cls).schema.equals(arrow_schema(cls))


def test_records_are_frozen_and_slotted():
    for cls, recs in SAMPLES.items():
        with pytest.raises(dataclasses.FrozenInstanceError):
            recs[0].__setattr__(field_names(cls)[0], "x")
        assert not hasattr(recs[0], "__dict__")


def test_run_dir_reads_what_was_written(tmp_path):
    run = RunDir(tmp_path / "run").create()
    write_records(SAMPLES[RequestRecord], RequestRecord, run.requests)
    write_records(SAMPLES[StepRecord], StepRecord, run.steps)
    write_records(SAMPLES[Span][:1], Span, run.spans)
    write_records(SAMPLES[Span][1:], Span, run.spans_parts / "spans-1-000000.parquet")
    assert list(read_requests(run.path).columns) == list(field_names(RequestRecord))
    assert len(read_requests(run.path)) == 2 and len(read_steps(run.path)) == 2
    assert list(read_spans(run.path)["component"]) == ["decode", "inference"]


def test_request_record_derived_fields():
    ok, failed = SAMPLES[RequestRecord]
    assert ok.ok and not failed.ok
    assert ok.latency_ms == pytest.approx(98e-6)


def test_worker_spans_cross_the_broker_as_named_dicts():
    spans = [wire_span("classify", "queue", 1, 2, {"crop": 0}), wire_span("classify", "broker", 3, 4)]
    msg = Message("r", "result", 0, 1, dtype="json", extra={"spans": spans})
    got = decode_message(encode_message(msg)).extra["spans"]
    assert got == spans
    assert all(set(s) == {"stage", "component", "start_ns", "end_ns", "attrs"} for s in got)


def test_run_config_keeps_unknown_keys_and_reads_old_files(tmp_path):
    old = {"run": {"started": "2026-01-01T00:00:00+0000", "status": "complete", "new_field": 1},
           "load": {"tool": "locust", "schedule": [{"users": 1, "seconds": 20}],
                    "stability": {"window_s": 5.0, "extend_up_to_s": None}},
           "gateway": {"settings": {"k": 4}}, "something_newer": {"x": [1, 2]}}
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = read_run_config(tmp_path)
    assert cfg.run.status == "complete" and cfg.run.extra == {"new_field": 1}
    assert cfg.load.schedule == [{"users": 1, "seconds": 20}]
    assert cfg.extra == {"something_newer": {"x": [1, 2]}}
    assert read_config(tmp_path) == old
    write_config(tmp_path, cfg)
    assert json.loads((tmp_path / "config.json").read_text()) == old
    cfg = update_config(tmp_path, counts={"requests": 3}, other=5)
    assert cfg.counts == {"requests": 3} and cfg.extra["other"] == 5
    assert read_config(tmp_path) == {**old, "counts": {"requests": 3}, "other": 5}
    assert RunConfig.from_dict({}).to_dict() == {} and read_config(tmp_path / "none") == {}


def test_stages_and_components():
    assert COMPONENTS[-1] == "other" and len(set(COMPONENTS)) == len(COMPONENTS) == 11
    assert COMPONENTS.index("backlog") == COMPONENTS.index("broker") + 1
    assert set(STAGES) == {"detect", "classify", "gateway"}


def test_the_contract_imports_nothing_from_the_project():
    project = {"overhead", "pipelines", "brokers", "loadtest", "deploy", "analysis"}
    for path in CONTRACT.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top not in project or name.startswith("overhead.contract"), (path.name, name)
