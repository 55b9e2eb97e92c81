"""``python -m loadtest.sweep ... --server triton``: a local Triton for one sweep, and Triton's own
clocks joined into the run's spans.

* ``ManagedTriton.for_gateway(run_dir, gateway_args, ...).start()`` (a ``TritonServer``, the
  Stack's server piece) writes the model repository (python
  flavour) for the gateway's detector and classifier into ``RUN_DIR/triton/repo``, starts the real
  ``tritonserver`` with ``--trace-config level=TIMESTAMPS rate=1`` (trace file
  ``RUN_DIR/triton/trace.json``, log ``RUN_DIR/logs/tritonserver.log``) and gives the gateway
  (and worker) arguments ``--backend triton --triton-url ...``.
* ``stop()`` (after the gateway and the workers stopped: open clients keep Triton from writing
  the trace) records ``/v2/models/<m>/stats`` into ``RUN_DIR/triton/stats.json`` and stops the
  server (the trace file is written at shutdown).
* ``join(run_dir)`` (after spans.parquet is merged) replaces every Triton call's client round
  trip ``inference`` span by ``transfer`` (client round trip minus server time, request and
  response legs), ``queue`` and ``inference`` (COMPUTE_START -> COMPUTE_END) from the trace
  entry whose Triton request id is in the span's ``server_rid`` attribute (detector: the request
  id; classifier: ``<rid>:<crop>``, a worker batch ``a:0|b:1``). All spans stay inside the round
  trip, so closure holds. Returns a summary for config.json, with the stats/trace cross-check.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from deploy.triton.server import TritonServer

SERVERS = ("embedded", "triton")


def add_arguments(ap) -> None:
    ap.add_argument("--server", choices=SERVERS, default=None,
                    help="serve both models from a local server started here (triton: real "
                         "tritonserver, Triton's trace joined into the spans); default: the "
                         "gateway's --backend (embedded)")
    ap.add_argument("--triton-protocol", choices=("http", "grpc"), default="grpc",
                    help="--server triton: protocol the gateway and workers use")
    ap.add_argument("--triton-max-batch", type=int, default=8,
                    help="--server triton: max_batch_size in config.pbtxt")
    ap.add_argument("--triton-queue-delay-us", type=int, default=100,
                    help="--server triton: dynamic batching max_queue_delay_microseconds")
    ap.add_argument("--triton-instances", type=int, default=1)


class ManagedTriton(TritonServer):
    """The Stack's Triton piece: writes the python-flavour repository for ``detector`` and
    ``classifier`` at start, serves it (trace on unless ``trace=False``), and records
    ``/v2/models/<m>/stats`` just before it stops."""

    def __init__(self, run_dir, detector: str, classifier: str, models_dir: str | None = None,
                 protocol: str = "grpc", max_batch: int = 8, queue_delay_us: int = 100,
                 instances: int = 1, intra_op_threads: int = 1, trace: bool = True,
                 repo: str | os.PathLike | None = None, log_path: str | os.PathLike | None = None,
                 http_port: int | None = None, grpc_port: int | None = None,
                 name: str = "tritonserver"):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "triton"
        self.detector, self.classifier, self.models_dir = detector, classifier, models_dir
        self.protocol = protocol
        self.opts = dict(max_batch=max_batch, queue_delay_us=queue_delay_us, instances=instances,
                         intra_op_threads=intra_op_threads)
        super().__init__(Path(repo) if repo else self.dir / "repo", http_port, grpc_port,
                         trace_file=self.dir / "trace.json" if trace else None,
                         log_path=log_path or self.run_dir / "logs" / "tritonserver.log",
                         threads=1)
        self.name = name
        self.stats: dict = {}
        self.info: dict = {}

    @classmethod
    def for_gateway(cls, run_dir, gateway_args: list[str], **kw) -> "ManagedTriton":
        """The models the gateway options (``--detector``, ``--classifier``, ``--models-dir``) ask for."""
        from overhead.config import GatewaySettings

        ns = GatewaySettings.from_args(gateway_args, known_only=True)
        return cls(run_dir, ns.detector, ns.classifier, ns.models_dir, **kw)

    @property
    def url(self) -> str:
        return f"grpc://{self.grpc_url}" if self.protocol == "grpc" else f"http://{self.http_url}"

    @property
    def port(self) -> str:
        return f"{self.http_port} http, {self.grpc_port} grpc"

    def start(self, timeout_s: float = 120.0) -> "ManagedTriton":
        from deploy.triton.repository import write_repository
        from pipelines.models import ensure_model

        infos = [ensure_model(n, models_dir=self.models_dir) for n in (self.detector, self.classifier)]
        write_repository(self.repo, infos, flavour="python", **self.opts)
        super().start(timeout_s)
        self.info = {"server": "triton", "protocol": self.protocol, "url": self.url,
                     "pid": self.pid, "repository": str(self.repo), "flavour": "python",
                     **self.opts, "trace_file": str(self.trace_file),
                     "log": str(self.log_path),
                     "stages": {"detect": {"server": "triton", "model": self.detector},
                                "classify": {"server": "triton", "model": self.classifier}}}
        return self

    def gateway_args(self) -> list[str]:
        return ["--backend", "triton", "--triton-url", self.url]

    def stop(self, timeout_s: float | None = None) -> int | None:
        """Record the statistics, then stop the server (it writes the trace file)."""
        if self.alive():
            self._record_stats()
        code = super().stop(timeout_s)
        if self.info:
            self.info["exit_code"] = code
        return code

    def _record_stats(self) -> None:
        try:
            for m in (self.detector, self.classifier):
                entries = self.model_stats(m).get("model_stats") or [{}]
                self.stats[m] = entries[0]
        except Exception as exc:  # noqa: BLE001 - the run matters more than its stats
            self.stats["error"] = f"{type(exc).__name__}: {exc}"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "stats.json").write_text(json.dumps(self.stats, indent=1))

    # -- trace join --------------------------------------------------------------------------
    def join(self, run_dir=None) -> dict:
        run_dir = Path(run_dir or self.run_dir)
        trace_path = self.dir / "trace.json"
        for _ in range(50):                         # written at shutdown; give it a moment
            if trace_path.exists() and trace_path.stat().st_size:
                break
            time.sleep(0.1)
        summary = dict(self.info)
        if not trace_path.exists():
            summary["join"] = {"error": f"no trace file at {trace_path}"}
            return summary
        from pipelines.inference.triton import read_trace

        trace = read_trace(trace_path)
        summary["join"] = join_spans_file(run_dir / "spans.parquet", trace)
        summary["cross_check"] = cross_check(trace, self.stats,
                                             (self.detector, self.classifier))
        (self.dir / "cross_check.json").write_text(json.dumps(summary["cross_check"], indent=1))
        return summary


def _attrs(a) -> dict:
    if not a:
        return {}
    try:
        return json.loads(a)
    except (TypeError, ValueError):
        return {}


def join_spans_file(spans_path: Path, trace: dict) -> dict:
    """Rewrite ``spans_path``: each ``inference`` span with a ``server_rid`` found in ``trace``
    becomes transfer/queue/inference from the trace. Returns counts per stage."""
    import dataclasses

    import pyarrow.parquet as pq

    from overhead.contract.records import Span, from_table
    from overhead.contract.rundir import write_records
    from pipelines.inference.triton import server_spans

    if not spans_path.exists():
        return {"error": f"no {spans_path}"}
    off = time.time_ns() - time.monotonic_ns()
    out, counts = [], {}
    for span in from_table(Span, pq.read_table(spans_path)):
        a = _attrs(span.attrs) if span.component == "inference" else {}
        srid = a.get("server_rid")
        if not srid:
            out.append(span)
            continue
        c = counts.setdefault(span.stage, {"joined": 0, "missing": 0})
        t = trace.get(srid)
        parts = server_spans(t, span.start_ns, span.end_ns, off) if t else []
        if not parts:
            c["missing"] += 1
            out.append(dataclasses.replace(
                span, attrs=json.dumps({**a, "source": "client"}, separators=(",", ":"))))
            continue
        c["joined"] += 1
        base = {k: v for k, v in a.items() if k in ("crop", "batch", "server_rid")}
        for comp, s, e, extra in parts:
            at = {**base, **(extra or {}), "source": "triton-trace"}
            out.append(dataclasses.replace(span, component=comp, start_ns=int(s), end_ns=int(e),
                                           attrs=json.dumps(at, separators=(",", ":"))))
    write_records(out, Span, spans_path)
    return counts


def cross_check(trace: dict, stats: dict, models) -> dict:
    """Per model: mean queue / compute (input+infer+output) ns from the trace vs from
    ``/v2/models/<m>/stats`` (both cover the server's whole life: rate=1 traces every request)."""
    from pipelines.inference.triton import stats_delta

    out = {}
    for m in models:
        ents = [t for t in trace.values() if t.get("model_name") == m
                and all(k in t for k in ("QUEUE_START", "COMPUTE_START", "COMPUTE_END"))]
        d = stats_delta({}, stats.get(m) or {})
        n = len(ents)
        tq = sum(t["COMPUTE_START"] - t["QUEUE_START"] for t in ents) / n if n else 0.0
        tc = sum(t["COMPUTE_END"] - t["COMPUTE_START"] for t in ents) / n if n else 0.0
        sc = d["compute_input_mean_ns"] + d["compute_infer_mean_ns"] + d["compute_output_mean_ns"]
        out[m] = {"trace_requests": n, "stats_requests": d["success_count"],
                  "trace_queue_ms": round(tq / 1e6, 3), "stats_queue_ms": round(d["queue_mean_ns"] / 1e6, 3),
                  "trace_compute_ms": round(tc / 1e6, 3), "stats_compute_ms": round(sc / 1e6, 3),
                  "batches": d["batches"]}
    return out


__all__ = ["ManagedTriton", "add_arguments", "cross_check", "join_spans_file"]
