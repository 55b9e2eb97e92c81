"""The locustfile's state, in one object (``LoadState``): what the Locust process keeps between
events. One instance per Locust process, created by the locustfile and passed to the functions of
``loadtest/records.py`` and ``loadtest/webui.py``.

Light on purpose (this process is gevent-patched): no Locust, no pyarrow at import time.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from overhead.contract.records import RequestRecord
from overhead.contract.rundir import RunDir
from overhead.contract.stability import StabilityRule

INFER_PATH = "/v1/infer"


class CorpusImage:
    __slots__ = ("name", "size_class", "data", "label", "content_type")

    def __init__(self, name: str, size_class: str, data: bytes, content_type: str = "image/jpeg"):
        self.name, self.size_class, self.data = name, size_class, data
        self.label = f"{INFER_PATH} [{size_class}]"  # Locust's stats show size classes apart
        self.content_type = content_type


@dataclass(frozen=True)
class OpenLoop:
    """Open-loop load: arrivals drawn at a target rate per step, at most ``max_in_flight``."""
    kind: str                 # poisson | constant
    rates: list[float]
    max_in_flight: int
    seed: int

    def to_dict(self) -> dict:
        return {"kind": self.kind, "rates": list(self.rates), "max_in_flight": self.max_in_flight,
                "seed": self.seed}


@dataclass
class UITest:
    """A web UI test in progress: its run directory and one step per swarm."""
    run: RunDir
    started_ns: int
    host: str | None
    gateway: dict                              # the gateway's GET /v1/config (or an error)
    swarms: list[dict] = field(default_factory=list)   # users, spawn_rate, start_ns, end_ns
    stopped_ns: int | None = None
    resets: list[dict] = field(default_factory=list)   # Reset stats: time_ns, records_before


@dataclass
class Pending:
    """A request the load generator has due or in flight (``send_ns`` None: not sent yet)."""
    request_id: str
    user: int
    image: CorpusImage
    intended_ns: int
    send_ns: int | None = None


@dataclass
class LoadState:
    env: Any = None                                   # the Locust Environment
    images: list[CorpusImage] = field(default_factory=list)
    manifest: str | None = None
    records: list[RequestRecord] = field(default_factory=list)  # append is atomic (greenlets)
    written: int = -1                                 # records in the last requests.parquet
    user_ids: Any = field(default_factory=itertools.count)
    open_loop: OpenLoop | None = None                 # None: closed loop
    open_stats: dict[int, dict] = field(default_factory=dict)  # step -> rate, scheduled, slot_waits
    rule: StabilityRule = field(default_factory=StabilityRule)
    extend_up_to_s: float | None = None               # steps held until stable, up to this long
    ui_test: UITest | None = None                     # web UI: the test in progress
    ui_tests: int = 0                                 # web UI: tests started in this process
    late: list = field(default_factory=list)          # web UI: greenlets merging late spans
    sent: int = 0                                     # worker: records sent to the master
    by_worker: dict[str, int] = field(default_factory=dict)  # master: worker id -> records received
    progress: Any = None                              # the progress.json greenlet
    in_flight: dict[str, Pending] = field(default_factory=dict)  # due or sent, not recorded yet
    pool: Any = None                                  # open loop: the in-flight greenlet pool
    drain_s: float = 10.0                             # at the end: wait this long for answers

    def reset_records(self) -> None:
        del self.records[:]
        self.written = -1

    def size_classes(self) -> list[str]:
        return sorted({i.size_class for i in self.images})
