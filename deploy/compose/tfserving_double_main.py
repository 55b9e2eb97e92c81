"""Entry point of the TF Serving TEST DOUBLE image (deploy/compose/tfserving-double.Dockerfile).

NOT TF Serving: ``tests/tfserving_double.py`` (real gRPC and REST wire formats, real SavedModels run
with TensorFlow) behind the command line the compose file gives ``tensorflow/serving``:

    --port=8500 --rest_api_port=8501 --model_config_file=/models/tfserving/models.config ...

It reads the model names and base paths from the ``models.config`` text (other flags, e.g. the
batching ones, are accepted and ignored: the double does not batch) and listens on 0.0.0.0 inside
its container. Used only by ``make compose-test``, where no registry can provide the real image.
"""
from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from pathlib import Path

from tfserving_double import TFServingDouble


def read_models_config(path: str) -> dict[str, str]:
    """``{name: base_path}`` from a ``ModelServerConfig`` text file."""
    text = Path(path).read_text()
    names = re.findall(r'name:\s*"([^"]+)"', text)
    bases = re.findall(r'base_path:\s*"([^"]+)"', text)
    return dict(zip(names, bases))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tfserving-double")
    ap.add_argument("--port", type=int, default=8500)
    ap.add_argument("--rest_api_port", type=int, default=8501)
    ap.add_argument("--model_config_file", required=True)
    args, ignored = ap.parse_known_args(argv)
    models = read_models_config(args.model_config_file)
    bases = {str(Path(b).parent) for b in models.values()}
    if len(bases) != 1:
        raise SystemExit(f"expected one base directory for all models, got {sorted(bases)}")
    srv = TFServingDouble(bases.pop(), list(models))
    srv.host, srv.grpc_port, srv.rest_port = "0.0.0.0", args.port, args.rest_api_port
    srv.start()
    print(f"TF Serving TEST DOUBLE (not TF Serving) serving {sorted(models)} on gRPC :{args.port}, "
          f"REST :{args.rest_api_port}; ignored flags: {ignored}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
