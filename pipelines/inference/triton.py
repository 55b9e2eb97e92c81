"""Triton Inference Server client backend (``make_backend("triton", info, url=...)``).

One model served by a running Triton (``deploy.triton``), called through ``tritonclient`` over
HTTP (``http://host:port`` or bare ``host:port``) or gRPC (``grpc://host:port``), tensors in
binary form. Same interface as the embedded backend:

* ``infer(x, request_id=None)`` — one item (no batch dim) sent as a batch of 1; the request id
  (minted if not given) is the Triton request id, so Triton's trace can be joined on it.
* ``infer_batch(batch)`` — a formed batch, split into chunks of the model's ``max_batch_size``.

Span semantics of the returned ``TritonInferResult`` (an ``InferResult``): ``enqueue_ns ==
start_ns`` = request handed to the client (after serialising the input), ``end_ns`` = response
received: callers' ``queue`` span is empty and ``inference`` is the client round trip (transfer +
server queue + compute). ``result.spans`` adds the client-side ``serialize`` span. The split of the
round trip into ``transfer`` / ``queue`` / ``inference`` comes from Triton itself:
``join_trace`` (per request, from a ``--trace-config level=TIMESTAMPS`` file) and
``model_stats`` / ``stats_delta`` (aggregates from ``/v2/models/<m>/stats``).

The server URL is a constructor argument (the gateway's and the worker's ``--triton-url``,
``overhead/config.py``). Server down or model missing raises ``TritonUnavailable`` naming the URL
and the model, within ``timeout_s``.
"""
from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import dataclass, field

import numpy as np

from overhead.contract.clock import now_ns, wall_minus_mono_ns
from pipelines.inference import InferenceBackend
from pipelines.inference.embedded import InferResult

_NP_TYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "UINT8": np.uint8,
             "INT8": np.int8, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}


def parse_url(url: str, protocol: str | None = None) -> tuple[str, str]:
    """``grpc://h:p`` -> ("grpc", "h:p"); ``http://h:p`` or ``h:p`` -> ("http", "h:p")."""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        scheme = scheme.lower()
        if scheme not in ("http", "grpc"):
            raise ValueError(f"Triton URL {url!r}: scheme must be http:// or grpc://")
        protocol = protocol or scheme
        url = rest
    return (protocol or "http"), url.rstrip("/")


class TritonUnavailable(RuntimeError):
    """The Triton server is unreachable, not ready, or does not serve the model."""


class TritonInferenceError(RuntimeError):
    """Triton answered an inference request with an error (or an empty/incomplete response)."""


@dataclass(slots=True)
class TritonInferResult(InferResult):
    request_id: str = ""
    spans: list = field(default_factory=list)    # extra (component, start_ns, end_ns, attrs)


class TritonBackend(InferenceBackend):
    kind = "triton"

    def __init__(self, model_info, url: str, protocol: str | None = None,
                 timeout_s: float = 10.0, connect_timeout_s: float = 2.0,
                 model_name: str | None = None, model_version: str = "", **_ignored):
        # _ignored: embedded options (intra_op_threads, max_batch, max_delay_ms) are server-side
        # settings here (config.pbtxt), accepted so the pipeline can pass the same options.
        self.model_name = model_name or getattr(model_info, "name", "")
        self.model_version = model_version
        self.input_hw = tuple(getattr(model_info, "input_hw", (0, 0)))
        self.url_given = url
        self.protocol, self.url = parse_url(self.url_given, protocol)
        self.timeout_s = float(timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self._local = threading.local()
        self._clients: list = []
        self._clients_lock = threading.Lock()
        if self.protocol == "http":
            import tritonclient.http as tc
        else:
            import tritonclient.grpc as tc
        self._tc = tc
        self._check_and_describe()

    # -- set-up ------------------------------------------------------------------------------
    def _where(self) -> str:
        return f"Triton at {self.protocol}://{self.url}, model {self.model_name!r}"

    def _client(self):
        c = getattr(self._local, "client", None)
        if c is None:
            if self.protocol == "http":
                c = self._tc.InferenceServerClient(self.url, connection_timeout=self.connect_timeout_s,
                                                   network_timeout=self.timeout_s)
            else:
                c = self._tc.InferenceServerClient(self.url)
            self._local.client = c
            with self._clients_lock:
                self._clients.append(c)
        return c

    def _call(self, name: str, *args, **kw):
        c = self._client()
        if self.protocol == "grpc":
            kw["client_timeout"] = kw.get("client_timeout", self.timeout_s)
        return getattr(c, name)(*args, **kw)

    def _check_and_describe(self) -> None:
        try:
            live = self._call("is_server_live", **({"client_timeout": self.connect_timeout_s}
                                                   if self.protocol == "grpc" else {}))
        except Exception as exc:  # noqa: BLE001 - connection refused, timeout, DNS ...
            raise TritonUnavailable(f"{self._where()}: server unreachable "
                                    f"({type(exc).__name__}: {exc})") from exc
        if not live:
            raise TritonUnavailable(f"{self._where()}: server is not live")
        try:
            ready = self._call("is_model_ready", self.model_name, self.model_version)
        except Exception as exc:  # noqa: BLE001
            raise TritonUnavailable(f"{self._where()}: readiness check failed ({exc})") from exc
        if not ready:
            try:
                index = self._call("get_model_repository_index")
                if self.protocol == "grpc":
                    index = [{"name": m.name, "state": m.state} for m in index.models]
                names = [f"{m.get('name')}({m.get('state', '?')})" for m in index]
            except Exception:  # noqa: BLE001
                names = ["?"]
            raise TritonUnavailable(f"{self._where()}: model is not ready or not in the "
                                    f"repository (server has: {', '.join(names) or 'none'})")
        meta = self._call("get_model_metadata", self.model_name, self.model_version,
                          **({"as_json": True} if self.protocol == "grpc" else {}))
        cfg = self._call("get_model_config", self.model_name, self.model_version,
                         **({"as_json": True} if self.protocol == "grpc" else {}))
        if self.protocol == "grpc":
            cfg = cfg.get("config", cfg)
        self.max_batch_size = int(cfg.get("max_batch_size", 0) or 0)
        inputs = meta["inputs"]
        if len(inputs) != 1:
            raise TritonUnavailable(f"{self._where()}: expected one input, model has "
                                    f"{[i['name'] for i in inputs]}")
        self.input_name = inputs[0]["name"]
        self.input_datatype = inputs[0]["datatype"]
        self.input_dtype = _NP_TYPES.get(self.input_datatype, np.float32)
        self.input_rank = len(inputs[0]["shape"])      # includes the batch dim if batching
        self.output_names = [o["name"] for o in meta["outputs"]]
        self.platform = meta.get("platform", "")
        self.backend_name = cfg.get("backend", "") or self.platform

    # -- inference ---------------------------------------------------------------------------
    def _run(self, batch: np.ndarray, request_id: str):
        """One Triton request; returns (outputs, serialize_start, send, recv)."""
        tc = self._tc
        s0 = now_ns()
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        inp = tc.InferInput(self.input_name, list(batch.shape), self.input_datatype)
        if self.protocol == "http":
            inp.set_data_from_numpy(batch, binary_data=True)
            outs = [tc.InferRequestedOutput(n, binary_data=True) for n in self.output_names]
        else:
            inp.set_data_from_numpy(batch)
            outs = [tc.InferRequestedOutput(n) for n in self.output_names]
        send = now_ns()
        try:
            res = self._call("infer", self.model_name, [inp], model_version=self.model_version,
                             outputs=outs, request_id=request_id)
        except self._tc.InferenceServerException as exc:
            raise TritonInferenceError(f"{self._where()}, request {request_id}: "
                                       f"{exc.message() if hasattr(exc, 'message') else exc}") from exc
        except Exception as exc:  # noqa: BLE001 - connection lost, timeout
            raise TritonUnavailable(f"{self._where()}, request {request_id}: "
                                    f"{type(exc).__name__}: {exc}") from exc
        recv = now_ns()
        out = {}
        for n in self.output_names:
            a = res.as_numpy(n)
            # a server whose model returned nothing must not look like a success
            bad_batch = self.max_batch_size > 0 and a is not None and a.shape[:1] != batch.shape[:1]
            if a is None or a.size == 0 or bad_batch:
                raise TritonInferenceError(
                    f"{self._where()}, request {request_id}: output {n!r} missing or has shape "
                    f"{None if a is None else a.shape} for a batch of {batch.shape[0]}")
            out[n] = a
        return out, s0, send, recv

    def infer(self, x: np.ndarray, request_id: str | None = None) -> TritonInferResult:
        x = np.asarray(x)
        if x.ndim == self.input_rank and self.max_batch_size > 0:
            if x.shape[0] != 1:
                raise ValueError(f"infer takes one item, got a batch of {x.shape[0]}: use infer_batch")
            x = x[0]
        rid = request_id or uuid.uuid4().hex
        outs, s0, send, recv = self._run(x[None] if self.max_batch_size > 0 else x, rid)
        rows = {k: v[0] for k, v in outs.items()} if self.max_batch_size > 0 else outs
        return TritonInferResult(rows, send, send, recv, 1, rid, [("serialize", s0, send, None)])

    def infer_batch(self, batch: np.ndarray, request_id: str | None = None) -> TritonInferResult:
        batch = np.asarray(batch)
        rid = request_id or uuid.uuid4().hex
        n = int(batch.shape[0])
        step = self.max_batch_size if self.max_batch_size > 0 else n
        parts, spans, first_send, last_recv = [], [], None, None
        for i, lo in enumerate(range(0, n, max(1, step))):
            sub_rid = rid if step >= n else f"{rid}.{i}"
            outs, s0, send, recv = self._run(batch[lo:lo + step], sub_rid)
            parts.append(outs)
            spans.append(("serialize", s0, send, None))
            first_send = send if first_send is None else first_send
            last_recv = recv
        outs = parts[0] if len(parts) == 1 else {
            k: np.concatenate([p[k] for p in parts]) for k in self.output_names}
        return TritonInferResult(outs, first_send, first_send, last_recv, n, rid, spans)

    # -- server-side numbers -----------------------------------------------------------------
    def model_stats(self) -> dict:
        """This model's ``/v2/models/<m>/stats`` entry (JSON form, both protocols)."""
        kw = {"as_json": True} if self.protocol == "grpc" else {}
        st = self._call("get_inference_statistics", self.model_name, self.model_version, **kw)
        entries = st.get("model_stats", [])
        return entries[0] if entries else {}

    def describe(self) -> dict:
        return {"backend": self.kind, "model": self.model_name, "url": f"{self.protocol}://{self.url}",
                "protocol": self.protocol, "server_backend": self.backend_name,
                "input": self.input_name, "outputs": self.output_names,
                "max_batch_size": self.max_batch_size, "timeout_s": self.timeout_s}

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        self._local = threading.local()


# -- statistics -------------------------------------------------------------------------------
def stats_delta(before: dict, after: dict) -> dict:
    """What happened between two ``model_stats()`` snapshots: counts, mean ns per request of
    ``queue``, ``compute_input``, ``compute_infer``, ``compute_output``, and executions per batch
    size (``{batch_size: executions}``)."""
    def stat(d, k):
        s = (d.get("inference_stats") or {}).get(k) or {}
        return int(s.get("count", 0) or 0), int(s.get("ns", 0) or 0)

    out = {"inference_count": int(after.get("inference_count", 0) or 0)
           - int(before.get("inference_count", 0) or 0),
           "execution_count": int(after.get("execution_count", 0) or 0)
           - int(before.get("execution_count", 0) or 0)}
    for k in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        c1, n1 = stat(after, k)
        c0, n0 = stat(before, k)
        out[f"{k}_count"] = c1 - c0
        out[f"{k}_mean_ns"] = (n1 - n0) / (c1 - c0) if c1 > c0 else 0.0

    def batches(d):
        res = {}
        for b in d.get("batch_stats") or []:
            ci = b.get("compute_infer") or {}
            res[int(b["batch_size"])] = int(ci.get("count", 0) or 0)
        return res

    b0, b1 = batches(before), batches(after)
    out["batches"] = {k: b1[k] - b0.get(k, 0) for k in sorted(b1) if b1[k] - b0.get(k, 0) > 0}
    return out


# -- per-request trace join -------------------------------------------------------------------
def read_trace(path: str | os.PathLike) -> dict[str, dict]:
    """Triton's ``level=TIMESTAMPS`` trace file -> ``{request_id: {timestamp name: ns}}``.

    Triton stamps with the steady clock (CLOCK_MONOTONIC on Linux, ``time.monotonic_ns``).
    A request appears as several trace objects (the request's and its tensors'); they are merged.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read().strip()
    if not text:
        return {}
    try:
        objs = json.loads(text)
    except json.JSONDecodeError:          # log-frequency files can be concatenated arrays
        objs = json.loads("[" + text.replace("][", "],[") + "]")
        objs = [o for arr in objs for o in arr]
    by_id: dict[int, dict] = {}
    for o in objs:
        tid = o.get("id")
        d = by_id.setdefault(tid, {"request_id": "", "model_name": "", "ts": {}})
        if o.get("request_id"):
            d["request_id"] = o["request_id"]
        if o.get("model_name"):
            d["model_name"] = o["model_name"]
        for t in o.get("timestamps") or ():
            d["ts"][t["name"]] = int(t["ns"])
    out = {}
    for d in by_id.values():
        if d["request_id"] and d["ts"]:
            out[d["request_id"]] = {"model_name": d["model_name"], **d["ts"]}
    return out


def server_spans(trace: dict, send_ns: int, recv_ns: int, mono_offset_ns: int | None = None
                 ) -> list[tuple[str, int, int, dict | None]]:
    """Split one client round trip ``send_ns -> recv_ns`` (``overhead.contract.clock.now_ns``) with the request's
    trace entry: ``queue`` = QUEUE_START -> COMPUTE_START, ``inference`` = COMPUTE_START ->
    COMPUTE_END (input + infer + output), ``transfer`` = the rest of the round trip (before
    REQUEST_START and after REQUEST_END, i.e. network, HTTP/gRPC (de)serialisation).

    ``mono_offset_ns`` = ``now_ns() - time.monotonic_ns()`` in a process on the SERVER's host
    (same host: this process's, ``wall_minus_mono_ns()``). Returns [] if the trace lacks the timestamps."""
    need = ("REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_END", "REQUEST_END")
    if not all(k in trace for k in need):
        return []
    off = mono_offset_ns if mono_offset_ns is not None else wall_minus_mono_ns()
    w = {k: trace[k] + off for k in need}
    attrs = {k.lower(): trace[k] - trace["COMPUTE_START"] for k in
             ("COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START") if k in trace}

    def clip(t: int) -> int:        # keep every span inside the round trip (closure)
        return min(max(t, send_ns), recv_ns)

    req_s, q_s, c_s, c_e = (clip(w[k]) for k in need[:4])
    req_e = max(clip(w["REQUEST_END"]), c_e)
    return [("transfer", send_ns, req_s, {"leg": "request"}),
            ("queue", q_s, c_s, None),
            ("inference", c_s, c_e, attrs or None),
            ("transfer", req_e, recv_ns, {"leg": "response"})]


__all__ = ["TritonBackend", "TritonInferResult", "TritonInferenceError", "TritonUnavailable",
           "read_trace", "server_spans", "stats_delta"]
