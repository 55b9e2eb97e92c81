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

``TFServingDouble.from_flags(flags, mounts)`` starts it from a ``tensorflow_model_server`` command
line instead: flags checked against TF Serving's own flag table (``TFSERVING_FLAGS``, from
``model_servers/main.cc``: unknown flag or bad value -> ValueError, as the server refuses to start),
``--model_config_file`` parsed as the real ``ModelServerConfig`` proto, ``--batching_parameters_file``
required with ``--enable_batching``, and with ``--enable_model_warmup`` each version's
``assets.extra/tf_serving_warmup_requests`` (a TFRecord of real ``PredictionLog`` protos) replayed
``--num_request_iterations_for_warmup`` times at load (``srv.warmup_log``: model -> batch sizes);
a failing warm-up request fails the load, as in TF Serving. ``mounts`` maps container paths to
local directories (e.g. {"/models": DIR}).
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

from deploy.processes import free_port


# TF Serving's command-line flags (tensorflow_serving/model_servers/main.cc) and their types.
TFSERVING_FLAGS = {
    "port": int, "grpc_socket_path": str, "rest_api_port": int, "rest_api_num_threads": int,
    "rest_api_timeout_in_ms": int, "enable_batching": bool, "allow_version_labels_for_unavailable_models": bool,
    "batching_parameters_file": str, "model_config_file": str, "model_config_file_poll_wait_seconds": int,
    "model_name": str, "model_base_path": str, "num_load_threads": int, "num_unload_threads": int,
    "max_num_load_retries": int, "load_retry_interval_micros": int, "file_system_poll_wait_seconds": int,
    "flush_filesystem_caches": bool, "tensorflow_session_parallelism": int,
    "tensorflow_intra_op_parallelism": int, "tensorflow_inter_op_parallelism": int, "ssl_config_file": str,
    "platform_config_file": str, "per_process_gpu_memory_fraction": float, "saved_model_tags": str,
    "grpc_channel_arguments": str, "grpc_max_threads": int, "enable_model_warmup": bool,
    "num_request_iterations_for_warmup": int, "version": bool, "monitoring_config_file": str,
    "remove_unused_fields_from_bundle_metagraph": bool, "enable_signature_method_name_check": bool,
    "xla_cpu_compilation_enabled": bool, "enable_profiler": bool,
    # the rest of main.cc's flag_list (checked against the current main.cc)
    "rest_api_enable_cors_support": bool, "enable_per_model_batching_parameters": bool,
    "tensorflow_session_config_file": str, "use_alts_credentials": bool, "prefer_tflite_model": bool,
    "num_tflite_pools": int, "num_tflite_interpreters_per_pool": int,
    "thread_pool_factory_config_file": str}


def parse_server_flags(flags) -> dict:
    """``--name=value`` / ``--name`` (bool) -> {name: typed value}, strictly against TFSERVING_FLAGS."""
    out = {}
    for f in flags:
        m = re.fullmatch(r"--([a-z0-9_]+)(?:=(.*))?", f)
        if not m or m.group(1) not in TFSERVING_FLAGS:
            raise ValueError(f"Unknown command line flag {f!r}")
        name, raw, typ = m.group(1), m.group(2), TFSERVING_FLAGS[m.group(1)]
        if typ is bool:
            if raw not in (None, "true", "false", "1", "0"):
                raise ValueError(f"Illegal value {raw!r} for flag --{name}")
            out[name] = raw in (None, "true", "1")
        elif raw is None:
            raise ValueError(f"Missing value for flag --{name}")
        else:
            try:
                out[name] = typ(raw)
            except ValueError:
                raise ValueError(f"Illegal value {raw!r} for flag --{name}") from None
    return out


class TFServingDouble:
    @classmethod
    def from_flags(cls, flags, mounts: dict) -> "TFServingDouble":
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2

        def local(p: str) -> Path:
            for src, dst in mounts.items():
                if p == src or p.startswith(src.rstrip("/") + "/"):
                    return Path(dst) / p[len(src.rstrip("/")):].lstrip("/")
            return Path(p)
        f = parse_server_flags(flags)
        cfg = text_format.Parse(local(f["model_config_file"]).read_text(),
                                model_server_config_pb2.ModelServerConfig())
        confs = list(cfg.model_config_list.config)
        bases = {local(c.base_path).parent for c in confs}
        if len(bases) != 1 or any(local(c.base_path).name != c.name for c in confs):
            raise ValueError(f"the double serves models from one directory as <base>/<name>: {bases}")
        if f.get("enable_batching"):
            bp = local(f["batching_parameters_file"]).read_text()     # KeyError/OSError: no file
            if not re.search(r"max_batch_size \{ value: \d+ \}", bp):
                raise ValueError("batching parameters without max_batch_size")
        srv = cls(bases.pop(), [c.name for c in confs])
        srv.flags = f
        if f.get("enable_model_warmup"):
            srv.replay_warmup(f.get("num_request_iterations_for_warmup", 1))
        return srv

    def replay_warmup(self, iterations: int = 1) -> None:
        from tensorflow_serving.apis import prediction_log_pb2

        from pipelines.inference.tfserving import tensor_to_numpy
        for m, versions in self.models.items():
            for v, fn in versions.items():
                path = self.base_dir / m / str(v) / "assets.extra" / "tf_serving_warmup_requests"
                if not path.exists():
                    continue
                for rec in self.tf.data.TFRecordDataset(str(path)):
                    log = prediction_log_pb2.PredictionLog.FromString(rec.numpy())
                    inputs = {k: tensor_to_numpy(t) for k, t in log.predict_log.request.inputs.items()}
                    for _ in range(iterations):
                        self.run(fn, inputs)               # an exception fails the load
                    self.warmup_log.setdefault(m, []).append(len(next(iter(inputs.values()))))

    def __init__(self, base_dir, models: list[str]):
        import tensorflow as tf

        self.tf = tf
        self.base_dir = Path(base_dir)
        self.flags: dict = {}
        self.warmup_log: dict[str, list[int]] = {}
        self.models: dict[str, dict[int, object]] = {}
        for m in models:
            for vdir in sorted((Path(base_dir) / m).iterdir()):
                if vdir.name.isdigit() and (vdir / "saved_model.pb").exists():
                    fn = tf.saved_model.load(str(vdir)).signatures["serving_default"]
                    self.models.setdefault(m, {})[int(vdir.name)] = fn
        self.lock = threading.Lock()        # one TF call at a time (2 cores)
        self.host = "127.0.0.1"             # deploy/compose/tfserving_double_main.py: 0.0.0.0
        self.grpc_port = free_port()
        self.rest_port = free_port()
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
