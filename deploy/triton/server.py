"""Start and stop the REAL ``tritonserver`` binary (from the ``nvidia-pytriton==0.7.0`` wheel).

The wheel needs numpy<2, so it lives in its own venv (default ``<project>/.venv-triton``, or
``$OVERHEAD_TRITON_VENV``), created by ``scripts/ensure_triton.sh``. Running the bare binary
(not PyTriton's proxy) on a generated repository needs three fixes, applied here:

* ``LD_LIBRARY_PATH`` = the venv's base Python ``lib`` + ``nvidia_pytriton.libs`` (else the Python
  backend stub links Debian's libpython3.11 and fails);
* a ``--backend-directory`` with ``python/{libtriton_python.so, triton_python_backend_utils.py,
  triton_python_backend_stub}`` (the 3.11 stub), prepared once inside the venv;
* the venv's ``bin`` first on ``PATH`` (the stub runs ``python3`` from PATH).

    with TritonServer(repo, trace_file="t.json") as ts:     # free loopback ports by default
        ts.http_url, ts.grpc_url                            # "127.0.0.1:P" (tritonclient style)

Stop = SIGTERM to the server's PID, then SIGKILL to its process group (the Python stubs), so no
stub is left behind. Failures raise ``TritonServerError`` with the log tail.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from deploy.probes import http_ok
from deploy.processes import ManagedProcess, ProcessFailed, free_port  # noqa: F401 (re-export)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENSURE_HINT = "run scripts/ensure_triton.sh (make test calls it)"


class TritonServerError(ProcessFailed):
    """The server binary is missing, or did not become ready."""


def server_venv() -> Path:
    return Path(os.environ.get("OVERHEAD_TRITON_VENV") or PROJECT_ROOT / ".venv-triton")


class TritonInstall:
    """Paths inside the server venv: binary, libs, backend directory, Python."""

    def __init__(self, venv: str | os.PathLike | None = None):
        self.venv = Path(venv) if venv else server_venv()
        self.python = self.venv / "bin" / "python"
        if not self.python.exists():
            raise TritonServerError(f"Triton server venv not found at {self.venv}: {ENSURE_HINT}")
        sites = sorted((self.venv / "lib").glob("python3*/site-packages"))
        if not sites:
            raise TritonServerError(f"no site-packages in {self.venv}: {ENSURE_HINT}")
        self.site = sites[0]
        self.pyver = self.site.parent.name.removeprefix("python")     # "3.11"
        self.root = self.site / "pytriton" / "tritonserver"
        self.binary = self.root / "bin" / "tritonserver"
        if not self.binary.is_file():
            raise TritonServerError(f"tritonserver binary not found at {self.binary} (PyPI wheel "
                                    f"nvidia-pytriton==0.7.0): {ENSURE_HINT}")
        self.libs = self.site / "nvidia_pytriton.libs"
        home = _pyvenv_home(self.venv)           # <base python>/bin
        self.base_lib = home.parent / "lib" if home else None
        self.backend_dir = self.venv / "overhead-triton-backends"

    def prepare_backends(self) -> Path:
        """``<venv>/overhead-triton-backends/python`` with the backend .so, utils and the stub
        for this venv's Python version (copied once; idempotent)."""
        dst = self.backend_dir / "python"
        files = {"libtriton_python.so": self.root / "backends" / "python" / "libtriton_python.so",
                 "triton_python_backend_utils.py":
                     self.root / "backends" / "python" / "triton_python_backend_utils.py",
                 "triton_python_backend_stub":
                     self.root / "python_backend_stubs" / self.pyver / "triton_python_backend_stub"}
        dst.mkdir(parents=True, exist_ok=True)
        for name, src in files.items():
            if not src.is_file():
                raise TritonServerError(f"{src} missing from the nvidia-pytriton wheel: {ENSURE_HINT}")
            target = dst / name
            if not target.exists() or target.stat().st_size != src.stat().st_size:
                shutil.copy2(src, target)
            if name != "triton_python_backend_utils.py":
                target.chmod(0o755)
        return self.backend_dir

    def env(self, threads: int = 1) -> dict:
        env = dict(os.environ)
        ld = [str(p) for p in (self.base_lib, self.libs) if p is not None]
        if env.get("LD_LIBRARY_PATH"):
            ld.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = ":".join(ld)
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(threads)
        env.pop("PYTHONPATH", None)     # the stub must not see the client venv's packages
        env.pop("PYTHONHOME", None)
        return env

    def version(self) -> str:
        out = subprocess.run([str(self.python), "-c",
                              "import importlib.metadata as m;print(m.version('nvidia-pytriton'))"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip()


def _pyvenv_home(venv: Path) -> Path | None:
    try:
        for line in (venv / "pyvenv.cfg").read_text().splitlines():
            k, _, v = line.partition("=")
            if k.strip() == "home":
                return Path(v.strip())
    except OSError:
        pass
    return None


class TritonServer(ManagedProcess):
    """The real ``tritonserver`` on loopback ports, serving ``repo`` (all models loaded): a
    ``ManagedProcess`` ready when ``GET /v2/health/ready`` answers 200, failed at once when the
    repository index reports a model UNAVAILABLE."""

    def __init__(self, repo: str | os.PathLike, http_port: int | None = None,
                 grpc_port: int | None = None, host: str = "127.0.0.1",
                 trace_file: str | os.PathLike | None = None, trace_rate: int = 1,
                 trace_log_frequency: int = 0, log_path: str | os.PathLike | None = None,
                 log_verbose: int = 0, threads: int = 1, venv: str | os.PathLike | None = None,
                 extra_args: list[str] | None = None):
        self.repo = Path(repo)
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        while self.grpc_port == self.http_port:
            self.grpc_port = free_port(host)
        self.trace_file = Path(trace_file) if trace_file else None
        self.trace_rate = trace_rate
        self.trace_log_frequency = trace_log_frequency
        log_path = Path(log_path) if log_path else Path(
            tempfile.mkdtemp(prefix="overhead-triton-")) / f"tritonserver-{self.http_port}.log"
        self.log_verbose = log_verbose
        self.threads = threads
        self.install = TritonInstall(venv)
        self.extra_args = list(extra_args or [])
        super().__init__("tritonserver", [], log_path, env=self.install.env(threads),
                         cwd=log_path.parent, stop_timeout_s=10.0)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def argv_now(self) -> list[str]:
        a = [str(self.install.binary), f"--model-repository={self.repo}",
             f"--backend-directory={self.install.backend_dir}",
             f"--http-address={self.host}", f"--http-port={self.http_port}",
             f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
             "--allow-metrics=false", "--allow-sagemaker=false", "--allow-vertex-ai=false",
             "--strict-readiness=true", "--exit-on-error=true", "--exit-timeout-secs=5",
             f"--log-verbose={self.log_verbose}"]
        if self.trace_file is not None:
            a += ["--trace-config", "level=TIMESTAMPS",
                  "--trace-config", f"rate={self.trace_rate}",
                  "--trace-config", f"triton,file={self.trace_file}"]
            if self.trace_log_frequency:
                a += ["--trace-config", f"log-frequency={self.trace_log_frequency}"]
        return a + self.extra_args

    def ready(self) -> bool:
        if http_ok(f"http://{self.http_url}/v2/health/ready", 0.5):
            return True
        broken = self.unavailable_models() or self._fatal_in_log()
        if broken:
            raise TritonServerError(f"tritonserver could not load the repository {self.repo} "
                                    f"({broken}); log {self.log_path}:\n{self.log_tail()}")
        return False

    def unavailable_models(self) -> str | None:
        """``"model: reason"`` for models the repository index reports UNAVAILABLE."""
        req = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}",
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=0.5) as r:
                index = json.load(r)
        except (urllib.error.URLError, OSError, ValueError):
            return None
        bad = [f"{m.get('name')}: {m.get('reason', '')}" for m in index
               if m.get("state") == "UNAVAILABLE"]
        return "; ".join(bad) or None

    # Some load failures leave tritonserver hanging before its endpoints open (a Python stub that
    # cannot start): nothing to probe, only its log says so. Used to fail fast, never for ready.
    FATAL_MARKERS = ("Failed to preinitialize Python stub", "failed to load '", "error: creating server",
                     "Stub process", "Internal: ", "Invalid argument: ", "Poll failed for model")

    def _fatal_in_log(self) -> str | None:
        for line in self.log_since_start()[-20000:].splitlines():
            if line.startswith("E") or "pb_stub" in line:
                for m in self.FATAL_MARKERS:
                    if m in line:
                        return line.strip()[-300:]
        return None

    def start(self, timeout_s: float = 60.0) -> "TritonServer":
        if not self.repo.is_dir():
            raise TritonServerError(f"model repository {self.repo} does not exist")
        self.install.prepare_backends()
        try:
            return super().start(timeout_s)
        except TritonServerError:
            raise
        except ProcessFailed as exc:
            raise TritonServerError(f"{exc} (repo {self.repo})") from None

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM the server (it unloads models, writes the trace file), wait, then SIGKILL its
        process group so no Python stub outlives it. Returns the exit code."""
        return super().stop(timeout_s)

    def model_stats(self, model: str) -> dict:
        with urllib.request.urlopen(f"http://{self.http_url}/v2/models/{model}/stats",
                                    timeout=5) as r:
            return json.load(r)


def main(argv: list[str] | None = None) -> int:
    """``python -m deploy.triton.server REPO [--http-port P --grpc-port Q --trace-file F]``:
    run in the foreground until Ctrl-C."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m deploy.triton.server")
    p.add_argument("repo")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--trace-file", default=None)
    p.add_argument("--log", default=None)
    p.add_argument("--check", action="store_true", help="verify the install and exit")
    a = p.parse_args(argv)
    if a.check:
        inst = TritonInstall()
        inst.prepare_backends()
        print(f"tritonserver {inst.binary} (nvidia-pytriton {inst.version()}), "
              f"backends {inst.backend_dir}")
        return 0
    srv = TritonServer(a.repo, a.http_port, a.grpc_port, trace_file=a.trace_file, log_path=a.log)
    srv.start()
    print(f"tritonserver ready: http {srv.http_url} grpc {srv.grpc_url} (pid {srv.pid}, "
          f"log {srv.log_path})", flush=True)
    try:
        while srv.running():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
