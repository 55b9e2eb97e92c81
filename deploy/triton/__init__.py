"""Triton Inference Server: model repository generation and a local launcher for the real binary.

* ``deploy.triton.repository`` — ``config.pbtxt`` (+ ``model.py``) per model, in two flavours from
  one ``TritonModelSpec``: ``onnxruntime`` (``platform: "onnxruntime_onnx"``, the NGC container)
  and ``python`` (ONNX Runtime inside the Python backend, the only backend the PyPI
  ``nvidia-pytriton`` wheel ships; used by the local server).
  ``python -m deploy.triton.repository --out DIR --models ssd_mobilenetv2,mobilenetv2``.
* ``deploy.triton.server`` — ``TritonServer``: start/stop the real ``tritonserver`` from the
  server venv (``.venv-triton``, numpy<2), readiness on ``/v2/health/ready``, stop by PID.
"""
