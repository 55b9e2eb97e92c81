"""A TEST DOUBLE of TF Serving (``tensorflow_model_server`` cannot run here: no binary on PyPI,
apt or npm, no Docker engine). It is NOT TF Serving: it speaks TF Serving's two APIs so the
client backend (``pipelines/inference/tfserving.py``) is tested against real wire formats:

* gRPC: a real ``grpc.server`` implementing ``tensorflow.serving.PredictionService/Predict`` and
  ``ModelService/GetModelStatus`` with the real ``tensorflow-serving-api`` protos;
* REST: a small real HTTP server: ``GET /v1/models/<m>[/versions/<v>]`` (status) and
  ``POST /v1/models/<m>[/versions/<v>]:predict`` (row ``instances`` and columnar ``inputs``
  formats, answers ``predictions`` / ``outputs``; errors as ``{"error": ...}`` with 400/404);

serving real SavedModels (signature ``serving_default``) loaded with TensorFlow from a model base
directory laid out like TF Serving's (``<base>/<model>/<version>/saved_model.pb``, as written by
``deploy.tfserving.config.write_config``). Model missing -> NOT_FOUND / 404 with TF Serving's
message "Servable not found for request: ...".

    with TFServingDouble(base_dir, ["custom_cnn"]) as srv:
        srv.rest_url   # http://127.0.0.1:P
        srv.grpc_url   # grpc://127.0.0.1:Q
"""
from __future__ import annotations

import json
import re
import socket
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TFServingDouble:
    def __init__(self, base_dir, models: list[str]):
        import tensorflow as tf

        self.tf = tf
        self.models: dict[str, dict[int, object]] = {}
        for m in models:
            for vdir in sorted((Path(base_dir) / m).iterdir()):
                if vdir.name.isdigit() and (vdir / "saved_model.pb").exists():
                    fn = tf.saved_model.load(str(vdir)).signatures["serving_default"]
                    self.models.setdefault(m, {})[int(vdir.name)] = fn
        self.lock = threading.Lock()        # one TF call at a time (2 cores)
        self.host = "127.0.0.1"             # deploy/compose/tfserving_double_main.py: 0.0.0.0
        self.grpc_port = _free_port()
        self.rest_port = _free_port()
        self._grpc = None
        self._http = None
        self._socks: set = set()

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    # -- shared ------------------------------------------------------------------------------
    def find(self, name: str, version: int | None):
        vs = self.models.get(name)
        if not vs or (version and version not in vs):
            v = f"Specific({name}, {version})" if version else f"Latest({name})"
            raise KeyError(f"Servable not found for request: {v}")
        v = version or max(vs)
        return v, vs[v]

    def run(self, fn, inputs: dict) -> dict:
        with self.lock:
            out = fn(**{k: self.tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in out.items()}

    # -- gRPC --------------------------------------------------------------------------------
    def _start_grpc(self) -> None:
        import grpc
        from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc,
                                             predict_pb2, prediction_service_pb2_grpc)

        from pipelines.inference.tfserving import make_tensor_proto, tensor_to_numpy

        double = self

        class Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):
                try:
                    v, fn = double.find(request.model_spec.name,
                                        request.model_spec.version.value or None)
                except KeyError as exc:
                    context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0]))
                try:
                    outs = double.run(fn, {k: tensor_to_numpy(t) for k, t in request.inputs.items()})
                except Exception as exc:  # noqa: BLE001 - TF's error goes back as INVALID_ARGUMENT
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{type(exc).__name__}: {exc}")
                res = predict_pb2.PredictResponse()
                res.model_spec.name = request.model_spec.name
                res.model_spec.version.value = v
                res.model_spec.signature_name = "serving_default"
                for k, a in outs.items():
                    res.outputs[k].CopyFrom(make_tensor_proto(a))
                return res

        class Models(model_service_pb2_grpc.ModelServiceServicer):
            def GetModelStatus(self, request, context):
                try:
                    v, _ = double.find(request.model_spec.name,
                                       request.model_spec.version.value or None)
                except KeyError as exc:
                    context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0]))
                g = get_model_status_pb2
                return g.GetModelStatusResponse(model_version_status=[
                    g.ModelVersionStatus(version=v, state=g.ModelVersionStatus.AVAILABLE)])

        srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                          options=[("grpc.max_receive_message_length", 256 << 20),
                                   ("grpc.max_send_message_length", 256 << 20)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Prediction(), srv)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(Models(), srv)
        srv.add_insecure_port(f"{self.host}:{self.grpc_port}")
        srv.start()
        self._grpc = srv

    # -- REST --------------------------------------------------------------------------------
    def _start_rest(self) -> None:
        double = self
        path_re = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?(:predict)?$")

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def setup(self):
                super().setup()
                double._socks.add(self.connection)   # closed by stop() (keep-alive connections)

            def _send(self, code: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _route(self, predict: bool):
                m = path_re.match(self.path)
                if not m or bool(m.group(3)) != predict:
                    self._send(404, {"error": f"Malformed request: {self.command} {self.path}"})
                    return None
                try:
                    return double.find(m.group(1), int(m.group(2)) if m.group(2) else None)
                except KeyError as exc:
                    self._send(404, {"error": exc.args[0]})
                    return None

            def do_GET(self):
                found = self._route(predict=False)
                if found:
                    self._send(200, {"model_version_status": [{
                        "version": str(found[0]), "state": "AVAILABLE",
                        "status": {"error_code": "OK", "error_message": ""}}]})

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                found = self._route(predict=True)
                if not found:
                    return
                _v, fn = found
                try:
                    doc = json.loads(raw)
                    in_names = list(fn.structured_input_signature[1])
                    if "instances" in doc:
                        inst = doc["instances"]
                        if inst and isinstance(inst[0], dict):
                            inputs = {k: np.asarray([r[k] for r in inst], np.float32) for k in inst[0]}
                        else:
                            inputs = {in_names[0]: np.asarray(inst, np.float32)}
                    elif "inputs" in doc:
                        inp = doc["inputs"]
                        inputs = ({k: np.asarray(v, np.float32) for k, v in inp.items()}
                                  if isinstance(inp, dict) else {in_names[0]: np.asarray(inp, np.float32)})
                    else:
                        raise ValueError("Missing 'inputs' or 'instances' key")
                    outs = double.run(fn, inputs)
                except Exception as exc:  # noqa: BLE001 - TF Serving answers 400 with the error
                    self._send(400, {"error": f"{type(exc).__name__}: {exc}"})
                    return
                if "instances" in doc:
                    if len(outs) == 1:
                        ans = {"predictions": next(iter(outs.values())).tolist()}
                    else:
                        n = len(next(iter(outs.values())))
                        ans = {"predictions": [{k: v[i].tolist() for k, v in outs.items()}
                                               for i in range(n)]}
                else:
                    ans = {"outputs": (next(iter(outs.values())).tolist() if len(outs) == 1
                                       else {k: v.tolist() for k, v in outs.items()})}
                self._send(200, ans)

        self._http = ThreadingHTTPServer((self.host, self.rest_port), Handler)
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, name="tfserving-double-rest",
                         daemon=True).start()

    def start(self) -> "TFServingDouble":
        self._start_grpc()
        self._start_rest()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
            for c in list(self._socks):
                try:
                    c.shutdown(socket.SHUT_RDWR)
                    c.close()
                except OSError:
                    pass
            self._socks.clear()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
