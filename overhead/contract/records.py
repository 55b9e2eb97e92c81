"""The typed records of a run: one dataclass each, ONE Arrow schema each (derived from its fields).

    Span           a timed piece of one request on one stage (spans.parquet)
    RequestRecord  the load generator's record of one request (requests.parquet)
    StepRecord     the real boundaries of one load step (steps.parquet)

A table's columns are the dataclass's fields, in order; their Arrow types come from the field
annotations (``str`` -> string, ``int`` -> int64, ``float`` -> float64; ``| None`` is nullable).
Code outside this module reads records by field name, never by position: the only positional code
(rows in field order, as the span recorder keeps them to stay cheap) is ``rows_to_table`` here.

A worker's spans cross the broker as ``WireSpan`` dicts (named keys, JSON in the message header),
built by ``wire_span``: the request id is the message's, the process (``Span.process``) is the
message header's ``proc`` (one per message, not per span).

Columns added later (``Span.process``) are nullable with a default: files written before them
still read (``select_columns`` fills them with nulls).

Imported by the gevent-patched locustfile: pyarrow is imported inside the functions that need it.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from typing import Any, Iterable, Sequence, TypedDict, TypeVar

# Stages and components of a span (DESIGN.md, "The measurement contract"). COMPONENTS is also the
# order in which the report lists components. ``broker`` is the broker's own transit; ``backlog``
# (never recorded as a span: the report derives it from the workers' busy time) is a crop's wait
# for a worker that was busy with other crops.
STAGES = ("detect", "classify", "gateway")
COMPONENTS = (
    "decode", "resize", "normalize", "serialize", "transfer", "queue",
    "inference", "postprocess", "broker", "backlog", "other",
)


@dataclass(frozen=True, slots=True)
class Span:
    request_id: str
    stage: str
    component: str
    start_ns: int
    end_ns: int
    attrs: str | None = None   # JSON object, compact (as written by SpanRecorder.record)
    process: str | None = None  # HOST:PID of the process whose clock stamped it (None: old runs)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    request_id: str
    user: int
    image: str
    size_class: str
    bytes: int
    intended_ns: int        # when the request should have gone out (open loop: the schedule)
    send_ns: int
    recv_ns: int
    status: int             # HTTP status, 0 when no answer
    error: str | None       # None for a successful request
    server_timing: str      # the answer's Server-Timing header ("" when none)
    k: int                  # crops classified (-1 when unknown)

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def latency_ms(self) -> float:
        """From the intended send time (free of coordinated omission)."""
        return (self.recv_ns - self.intended_ns) / 1e6


@dataclass(frozen=True, slots=True)
class StepRecord:
    step: int
    users: int
    start_ns: int
    measure_start_ns: int   # after the step's warm-up
    end_ns: int


class WireSpan(TypedDict):
    """A span in a broker message header (the request id is the message's)."""
    stage: str
    component: str
    start_ns: int
    end_ns: int
    attrs: dict | None


def wire_span(stage: str, component: str, start_ns: int, end_ns: int,
              attrs: dict | None = None) -> WireSpan:
    return {"stage": stage, "component": component, "start_ns": int(start_ns),
            "end_ns": int(end_ns), "attrs": attrs}


# --- Arrow ---------------------------------------------------------------------------------------

R = TypeVar("R")
_ARROW_TYPES = {str: "string", int: "int64", float: "float64", bool: "bool_"}


def field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


@functools.cache
def column_types(cls: type) -> tuple[tuple[str, str], ...]:
    """``((name, arrow type name), ...)`` of a record class, from its annotations."""
    hints = typing.get_type_hints(cls)
    out = []
    for name in field_names(cls):
        hint = hints[name]
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        out.append((name, _ARROW_TYPES[hint]))
    return tuple(out)


@functools.cache
def arrow_schema(cls: type):
    """The one Arrow schema of a record class."""
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, typ)()) for name, typ in column_types(cls)])


def rows_to_table(cls: type, rows: Sequence[tuple]):
    """Tuples in ``cls``'s field order (the span recorder's cheap form) to an Arrow table.
    Trailing fields that have defaults may be left out of every row (null columns)."""
    import pyarrow as pa

    schema = arrow_schema(cls)
    cols = list(zip(*rows)) if rows else [[] for _ in schema]
    cols += [[None] * len(rows) for _ in range(len(schema) - len(cols))]
    return pa.table([pa.array(c, f.type) for c, f in zip(cols, schema)], schema=schema)


def to_columns(records: Iterable[Any], cls: type) -> dict[str, list]:
    """Records to ``{field: [values]}`` (compact and named: for messages between processes)."""
    records = list(records)
    return {name: [getattr(r, name) for r in records] for name in field_names(cls)}


def from_columns(cls: type[R], columns: dict[str, list]) -> list[R]:
    names = field_names(cls)
    if not columns or not columns.get(names[0]):
        return []
    return [cls(*values) for values in zip(*(columns[n] for n in names))]


def to_table(records: Iterable[Any], cls: type):
    """Records to an Arrow table with ``cls``'s schema."""
    import pyarrow as pa

    schema = arrow_schema(cls)
    cols = to_columns(records, cls)
    return pa.table([pa.array(cols[f.name], f.type) for f in schema], schema=schema)


def select_columns(table, cls: type):
    """An Arrow table with exactly ``cls``'s columns and schema: selected by name (extra columns
    dropped), cast, and nullable fields the table lacks (written before they existed) as nulls."""
    import pyarrow as pa

    schema = arrow_schema(cls)
    for f in schema:
        if f.name not in table.column_names:
            default = next(d.default for d in dataclasses.fields(cls) if d.name == f.name)
            if default is not None:
                raise KeyError(f"column {f.name!r} missing")
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table.select(list(field_names(cls))).cast(schema)


def from_table(cls: type[R], table) -> list[R]:
    """An Arrow table (any column order, extra columns ignored) back to records."""
    return from_columns(cls, select_columns(table, cls).to_pydict())
