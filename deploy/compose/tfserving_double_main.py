"""Entry point of the TF Serving TEST DOUBLE image (deploy/compose/tfserving-double.Dockerfile).

NOT TF Serving: ``tests/tfserving_double.py`` (real gRPC and REST wire formats, real SavedModels run
with TensorFlow) behind the command line the compose file gives ``tensorflow/serving``
(``deploy.services.tfserving_command()``):

    --port=8500 --rest_api_port=8501 --model_config_file=/models/tfserving/models.config
    --enable_batching=true --batching_parameters_file=... --grpc_max_threads=8
    --tensorflow_intra_op_parallelism=2 --tensorflow_inter_op_parallelism=1
    --enable_model_warmup=true --num_request_iterations_for_warmup=1

Every flag is checked as TF Serving checks it (``TFServingDouble.from_flags``: its flag table from
``model_servers/main.cc``, typed values; an unknown flag or a bad value exits 1 before anything
listens), ``models.config`` is parsed as the real ``ModelServerConfig`` proto, the batching file
must exist and name ``max_batch_size``, and each version's ``tf_serving_warmup_requests`` is
replayed at load. The thread and batching flags are recorded, not acted on: the double runs one
TensorFlow call at a time and does not batch. Listens on 0.0.0.0 inside its container. Used only
by ``make compose-test``, where no registry can provide the real image.
"""
from __future__ import annotations

import signal
import sys
import threading

from tfserving_double import TFServingDouble


def start(flags: list[str], mounts: dict | None = None, host: str = "0.0.0.0") -> TFServingDouble:
    """The double from ``tensorflow_model_server`` flags (``mounts``: container path -> local
    directory, for tests), listening on ``--port`` / ``--rest_api_port``. ValueError: a flag TF
    Serving would refuse."""
    srv = TFServingDouble.from_flags(flags, mounts or {})
    srv.host = host
    # TF Serving without --rest_api_port has no REST API; the double always serves one (8501)
    srv.grpc_port, srv.rest_port = srv.flags.get("port", 8500), srv.flags.get("rest_api_port") or 8501
    return srv.start()


def main(argv: list[str] | None = None) -> int:
    flags = list(sys.argv[1:] if argv is None else argv)
    try:
        srv = start(flags)
    except (ValueError, KeyError, OSError) as exc:
        print(f"TF Serving TEST DOUBLE: refusing to start: {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)
        return 1
    print(f"TF Serving TEST DOUBLE (not TF Serving) serving {sorted(srv.models)} on gRPC "
          f":{srv.grpc_port}, REST :{srv.rest_port}; flags {srv.flags}; warm-up replayed "
          f"{srv.warmup_log}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
