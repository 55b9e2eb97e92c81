"""TF Serving client backend (``make_backend("tfserving", info, url=...)``).

One model served by ``tensorflow_model_server`` (``deploy/tfserving``), signature
``serving_default``, input ``info.input_name`` (``"input"``), outputs ``info.output_names``:

* REST (``http://host:port``, default port 8501): ``POST /v1/models/<m>[/versions/<v>]:predict``
  with the row format ``{"instances": [...]}`` (``rest_format="instances"``, default) or the
  columnar format ``{"inputs": {"input": [...]}}`` (``rest_format="inputs"``). JSON numbers: what
  TF Serving's REST API costs is part of what is measured.
* gRPC (``grpc://host:port``, default port 8500): ``PredictionService.Predict`` from
  ``tensorflow-serving-api`` with the input as a ``TensorProto`` (``tensor_content``, raw bytes).
  Note: the ``tensorflow_serving`` protos import ``tensorflow`` (~3-6 s, once, when the backend is
  made; never per request).

Same interface as the other backends: ``infer(x, request_id=None)`` (one item),
``infer_batch(batch, request_id=None)``. ``enqueue_ns == start_ns`` = request encoded,
``end_ns`` = response received; ``result.spans`` holds the client ``serialize`` spans (encode the
request, decode the response). TF Serving has no request id or per-request trace: its round trip
is ``inference`` (transfer + queue + compute), as with any black-box server.

Errors: ``TFServingUnavailable`` (server down -> within ``connect_timeout_s``; model missing or not
AVAILABLE -> names the server URL and the model) and ``TFServingInferenceError`` (an error answer,
a missing output).
"""
from __future__ import annotations

import http.client
import json
import threading
from dataclasses import dataclass, field

import numpy as np

from overhead.contract.clock import now_ns
from pipelines.inference import InferenceBackend
from pipelines.inference.embedded import InferResult

# tensorflow DataType enum values (tensorflow/core/framework/types.proto)
_DT = {np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3,
       np.dtype(np.uint8): 4, np.dtype(np.int64): 9, np.dtype(np.float16): 19}
_NP = {v: k for k, v in _DT.items()}
_VAL_FIELD = {1: "float_val", 2: "double_val", 3: "int_val", 4: "int_val", 9: "int64_val",
              19: "half_val"}


class TFServingUnavailable(RuntimeError):
    """The TF Serving server is unreachable, or does not serve the model (version)."""


class TFServingInferenceError(RuntimeError):
    """TF Serving answered a predict request with an error, or without an expected output."""


@dataclass(slots=True)
class TFServingInferResult(InferResult):
    request_id: str = ""                         # empty: TF Serving has no trace to join
    spans: list = field(default_factory=list)    # (component, start_ns, end_ns, attrs)


def _parse(url: str) -> tuple[str, str, int]:
    scheme = "http"
    if "://" in url:
        scheme, url = url.split("://", 1)
        scheme = scheme.lower()
        if scheme not in ("http", "grpc"):
            raise ValueError(f"TF Serving URL {url!r}: scheme must be http:// or grpc://")
    url = url.rstrip("/")
    host, _, port = url.rpartition(":")
    if not host:
        host, port = url, ("8501" if scheme == "http" else "8500")
    return scheme, host, int(port)


def make_tensor_proto(a: np.ndarray):
    """A ``TensorProto`` from a numpy array without TensorFlow ops (raw ``tensor_content``)."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

    a = np.ascontiguousarray(a)
    if a.dtype not in _DT:
        raise TypeError(f"unsupported dtype {a.dtype}")
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in a.shape])
    return tensor_pb2.TensorProto(dtype=_DT[a.dtype], tensor_shape=shape,
                                  tensor_content=a.tobytes())


def tensor_to_numpy(t) -> np.ndarray:
    dt = _NP.get(t.dtype)
    if dt is None:
        raise TypeError(f"unsupported TensorProto dtype {t.dtype}")
    shape = [d.size for d in t.tensor_shape.dim]
    if t.tensor_content:
        return np.frombuffer(t.tensor_content, dtype=dt).reshape(shape).copy()
    vals = np.asarray(getattr(t, _VAL_FIELD[t.dtype]), dtype=dt)
    n = int(np.prod(shape)) if shape else 1
    if vals.size == 1 and n > 1:
        vals = np.full(n, vals[0], dtype=dt)
    return vals.reshape(shape)


class TFServingBackend(InferenceBackend):
    kind = "tfserving"

    def __init__(self, model_info, url: str, rest_format: str = "instances",
                 timeout_s: float = 10.0, connect_timeout_s: float = 2.0,
                 model_name: str | None = None, model_version: int | None = None,
                 signature_name: str = "serving_default", **_ignored):
        # _ignored: embedded options (threads, max_batch, ...) are server-side here
        # (batching_parameters.txt), accepted so the pipeline can pass the same options.
        if rest_format not in ("instances", "inputs"):
            raise ValueError("rest_format must be 'instances' (row) or 'inputs' (columnar)")
        self.model_name = model_name or getattr(model_info, "name", "")
        self.model_version = model_version
        self.signature_name = signature_name
        self.input_hw = tuple(getattr(model_info, "input_hw", (0, 0)))
        self.input_name = getattr(model_info, "input_name", None) or "input"
        self.output_names = list(getattr(model_info, "output_names", []) or [])
        self.rest_format = rest_format
        self.url_given = url
        self.protocol, self.host, self.port = _parse(self.url_given)
        self.timeout_s = float(timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self._local = threading.local()
        self._conns: list = []
        self._lock = threading.Lock()
        self._channel = None
        if self.protocol == "grpc":
            self._setup_grpc()
        self._check()

    def _where(self) -> str:
        v = f" version {self.model_version}" if self.model_version else ""
        return f"TF Serving at {self.protocol}://{self.host}:{self.port}, model {self.model_name!r}{v}"

    # -- transport ---------------------------------------------------------------------------
    def _setup_grpc(self) -> None:
        try:
            import grpc
            from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc,
                                                 predict_pb2, prediction_service_pb2_grpc)
        except ImportError as exc:   # e.g. the runtime image: no TensorFlow, no serving protos
            raise RuntimeError(
                f"{self._where()}: grpc:// needs tensorflow-serving-api and tensorflow ({exc}); "
                f"install them (pip install 'overhead[build]') or use REST: "
                f"http://{self.host}:8501") from exc

        self._grpc = grpc
        self._pb = predict_pb2
        self._status_pb = get_model_status_pb2
        opts = [("grpc.max_send_message_length", 256 << 20),
                ("grpc.max_receive_message_length", 256 << 20)]
        self._channel = grpc.insecure_channel(f"{self.host}:{self.port}", options=opts)
        self._predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._model_stub = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def _conn(self, timeout: float | None = None) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout_s)
            self._local.conn = c
            with self._lock:
                self._conns.append(c)
        return c

    def _http(self, method: str, path: str, body: bytes | None = None,
              timeout: float | None = None) -> tuple[int, bytes]:
        for attempt in (0, 1):   # a kept-alive connection the server closed: retry once
            c = self._conn(timeout)
            try:
                c.request(method, path, body=body,
                          headers={"Content-Type": "application/json"} if body else {})
                r = c.getresponse()
                return r.status, r.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                c.close()
                self._local.conn = None
                if attempt:
                    raise
            except Exception:
                c.close()
                self._local.conn = None
                raise
        raise AssertionError("unreachable")

    def _model_path(self) -> str:
        v = f"/versions/{self.model_version}" if self.model_version else ""
        return f"/v1/models/{self.model_name}{v}"

    # -- set-up check ------------------------------------------------------------------------
    def _check(self) -> None:
        if self.protocol == "http":
            try:
                status, body = self._http("GET", self._model_path(), timeout=self.connect_timeout_s)
            except (OSError, http.client.HTTPException) as exc:
                raise TFServingUnavailable(f"{self._where()}: server unreachable "
                                           f"({type(exc).__name__}: {exc})") from exc
            try:
                doc = json.loads(body or b"{}")
            except ValueError:
                doc = {"error": body[:200].decode(errors="replace")}
            if status != 200:
                raise TFServingUnavailable(f"{self._where()}: model not served (HTTP {status}: "
                                           f"{doc.get('error', doc)})")
            states = [s.get("state") for s in doc.get("model_version_status", [])]
        else:
            req = self._status_pb.GetModelStatusRequest()
            req.model_spec.name = self.model_name
            if self.model_version:
                req.model_spec.version.value = int(self.model_version)
            try:
                res = self._model_stub.GetModelStatus(req, timeout=self.connect_timeout_s)
            except self._grpc.RpcError as exc:
                code = exc.code()
                what = ("model not served" if code == self._grpc.StatusCode.NOT_FOUND
                        else "server unreachable")
                raise TFServingUnavailable(f"{self._where()}: {what} ({code.name}: "
                                           f"{exc.details()})") from exc
            from tensorflow_serving.apis import get_model_status_pb2 as g
            states = [g.ModelVersionStatus.State.Name(s.state) for s in res.model_version_status]
        if "AVAILABLE" not in states:
            raise TFServingUnavailable(f"{self._where()}: no AVAILABLE version (states {states})")

    # -- inference ---------------------------------------------------------------------------
    def _predict(self, batch: np.ndarray) -> tuple[dict, list, int, int]:
        """One predict call; returns (outputs with batch dim, client spans, send_ns, recv_ns)."""
        s0 = now_ns()
        if self.protocol == "http":
            data = batch.tolist()
            doc = ({"signature_name": self.signature_name, "instances": data}
                   if self.rest_format == "instances" else
                   {"signature_name": self.signature_name, "inputs": {self.input_name: data}})
            body = json.dumps(doc, separators=(",", ":")).encode()
            send = now_ns()
            try:
                status, raw = self._http("POST", self._model_path() + ":predict", body)
            except (OSError, http.client.HTTPException) as exc:
                raise TFServingUnavailable(f"{self._where()}: {type(exc).__name__}: {exc}") from exc
            recv = now_ns()
            try:
                ans = json.loads(raw)
            except ValueError:
                ans = {"error": raw[:300].decode(errors="replace")}
            if status != 200 or "error" in ans:
                cls = TFServingUnavailable if status == 404 else TFServingInferenceError
                raise cls(f"{self._where()}: HTTP {status}: {ans.get('error', ans)}")
            outs = self._from_rest(ans)
        else:
            req = self._pb.PredictRequest()
            req.model_spec.name = self.model_name
            req.model_spec.signature_name = self.signature_name
            if self.model_version:
                req.model_spec.version.value = int(self.model_version)
            req.inputs[self.input_name].CopyFrom(make_tensor_proto(batch))
            send = now_ns()
            try:
                res = self._predict_stub.Predict(req, timeout=self.timeout_s)
            except self._grpc.RpcError as exc:
                code = exc.code()
                cls = (TFServingUnavailable if code in (self._grpc.StatusCode.UNAVAILABLE,
                                                        self._grpc.StatusCode.NOT_FOUND,
                                                        self._grpc.StatusCode.DEADLINE_EXCEEDED)
                       else TFServingInferenceError)
                raise cls(f"{self._where()}: {code.name}: {exc.details()}") from exc
            recv = now_ns()
            outs = {k: tensor_to_numpy(v) for k, v in res.outputs.items()}
        names = self.output_names or sorted(outs)
        for n in names:
            a = outs.get(n)
            if a is None or a.shape[:1] != batch.shape[:1]:
                raise TFServingInferenceError(
                    f"{self._where()}: output {n!r} missing or has shape "
                    f"{None if a is None else a.shape} for a batch of {batch.shape[0]} "
                    f"(outputs: {sorted(outs)})")
        s1 = now_ns()
        spans = [("serialize", s0, send, {"leg": "request"}),
                 ("serialize", recv, s1, {"leg": "response"})]
        return {n: outs[n] for n in names}, spans, send, recv

    def _from_rest(self, ans: dict) -> dict:
        single = self.output_names[0] if len(self.output_names) == 1 else None
        if "predictions" in ans:          # row format
            p = ans["predictions"]
            if p and isinstance(p[0], dict):
                return {k: np.asarray([row[k] for row in p], np.float32) for k in p[0]}
            return {single or "output": np.asarray(p, np.float32)}
        if "outputs" in ans:              # columnar format
            o = ans["outputs"]
            if isinstance(o, dict):
                return {k: np.asarray(v, np.float32) for k, v in o.items()}
            return {single or "output": np.asarray(o, np.float32)}
        raise TFServingInferenceError(f"{self._where()}: answer has neither predictions nor outputs")

    def infer(self, x: np.ndarray, request_id: str | None = None) -> TFServingInferResult:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 4:
            if x.shape[0] != 1:
                raise ValueError(f"infer takes one item, got a batch of {x.shape[0]}: use infer_batch")
            x = x[0]
        outs, spans, send, recv = self._predict(x[None])
        return TFServingInferResult({k: v[0] for k, v in outs.items()}, send, send, recv, 1, "", spans)

    def infer_batch(self, batch: np.ndarray, request_id: str | None = None) -> TFServingInferResult:
        batch = np.asarray(batch, dtype=np.float32)
        outs, spans, send, recv = self._predict(batch)
        return TFServingInferResult(outs, send, send, recv, int(batch.shape[0]), "", spans)

    def describe(self) -> dict:
        return {"backend": self.kind, "model": self.model_name,
                "url": f"{self.protocol}://{self.host}:{self.port}", "protocol": self.protocol,
                "rest_format": self.rest_format if self.protocol == "http" else None,
                "signature": self.signature_name, "input": self.input_name,
                "outputs": self.output_names, "timeout_s": self.timeout_s}

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()
        self._local = threading.local()
        if self._channel is not None:
            self._channel.close()
            self._channel = None


__all__ = ["TFServingBackend", "TFServingInferResult", "TFServingInferenceError",
           "TFServingUnavailable", "make_tensor_proto", "tensor_to_numpy"]
