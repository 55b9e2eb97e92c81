"""Fixtures that start the REAL ``tritonserver`` (nvidia-pytriton 0.7.0 wheel, server venv
``.venv-triton``) on free loopback ports and stop it by PID.

A missing server venv or ``tritonclient`` is a FAILURE, never a skip: run
``scripts/ensure_triton.sh`` (``make test`` does). Test modules import the fixtures explicitly
(``from triton_server import triton_models, triton_repo, triton_server``); it also works as a
plugin (``pytest_plugins = ["triton_server"]``).

``triton_server`` serves the real ``ssd_mobilenetv2`` and ``mobilenetv2`` (Python-backend
flavour, ONNX Runtime 1 thread per instance, one instance, ``max_batch_size`` 8, dynamic batching
with a 2 ms queue delay) for the whole session.
"""
from __future__ import annotations

import pytest

ENSURE = "run scripts/ensure_triton.sh (make test calls it)"
MAX_BATCH = 8
QUEUE_DELAY_US = 2000


def require_triton():
    """Fail (not skip) with the set-up hint when the server venv or the client is missing."""
    try:
        import tritonclient.grpc  # noqa: F401
        import tritonclient.http  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"tritonclient is not installed in this venv ({exc}): {ENSURE}")
    from deploy.triton.server import TritonInstall, TritonServerError
    try:
        TritonInstall().prepare_backends()
    except TritonServerError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def triton_models():
    from pipelines.models import ensure_model

    return ensure_model("ssd_mobilenetv2"), ensure_model("mobilenetv2")


@pytest.fixture(scope="session")
def triton_repo(triton_models, tmp_path_factory):
    from deploy.triton.repository import write_repository

    repo = tmp_path_factory.mktemp("triton_repo")
    write_repository(repo, triton_models, flavour="python", max_batch=MAX_BATCH,
                     queue_delay_us=QUEUE_DELAY_US, instances=1, intra_op_threads=1)
    return repo


@pytest.fixture(scope="session")
def triton_server(triton_repo, tmp_path_factory):
    require_triton()
    from deploy.stack import Stack
    from deploy.triton.server import TritonServer

    log = tmp_path_factory.mktemp("triton_log") / "tritonserver.log"
    srv = TritonServer(triton_repo, log_path=log, threads=1)
    with Stack(server=srv, say=lambda msg: None).start(90):
        yield srv
