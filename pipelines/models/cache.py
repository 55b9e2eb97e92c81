"""The model cache: build once, reuse by key. No TensorFlow here.

A build lives in ``<models_dir>/<name>-<key>/``; the key hashes everything that decides what was
built (name, seed, input size, formats, weights file, tf/keras/tf2onnx versions and the builder
version), so a cache hit is a directory that exists, read without importing TensorFlow.

Builds are atomic and exclusive: a build writes into ``.tmp-<name>-<key>-<pid>`` and is renamed
into place when complete (a killed build leaves only a temp dir, cleaned by the next build), and
an ``fcntl`` lock on ``.locks/<name>-<key>.lock`` makes a second process wait for the first
instead of building the same model again.

Each build also keeps what it was built from in ``<name>-<key>/build.json`` (the key material).
The key stays honest (a machine that can build rebuilds when its TensorFlow changes), but a
process that CANNOT build here, because the build stack (tensorflow, keras, tf2onnx) is not
installed or the models directory is not writable (e.g. the runtime image with the builder's
volume mounted read-only), resolves the model by name and settings through these files instead,
whatever versions it has installed, and writes nothing: no lock file, no directory.

The TensorFlow build runs in a child process by default (``in_process=None`` builds in-process
only if TensorFlow is already imported), so a serving process that calls ``ensure_model`` at
start-up never loads TensorFlow, its threads or its memory.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from .catalog import BUILDER_VERSION, MODEL_NAMES, SPECS, get_spec
from .info import META_FILE, ModelInfo
from .normalization import NORMALIZATIONS

FORMATS = ("onnx", "savedmodel")
BUILD_FILE = "build.json"   # the key material of a build, next to model.json
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]   # the directory that holds ``pipelines/``
# TensorFlow's C++ start-up chatter (printed before absl logging is set up, so
# TF_CPP_MIN_LOG_LEVEL does not hide it): dropped from a child build's progress output.
_TF_NOISE = re.compile(r"^([IWE]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl"
                       r"|To enable the following instructions)")


def default_models_dir() -> Path:
    """``$OVERHEAD_MODELS_DIR`` or ``~/.cache/overhead/models``."""
    env = os.environ.get("OVERHEAD_MODELS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "overhead" / "models"


def _say(msg: str, progress: bool) -> None:
    if progress:
        print(f"[models] {msg}", file=sys.stderr, flush=True)


def _dist_version(*dists: str) -> str:
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            pass
    return "missing"


def build_versions() -> dict:
    """Versions of the build stack, read from package metadata (no imports)."""
    return {"tensorflow": _dist_version("tensorflow", "tensorflow-cpu", "tf-nightly"),
            "keras": _dist_version("keras"), "tf2onnx": _dist_version("tf2onnx")}


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(material: dict) -> str:
    blob = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as f:
        try:
            import fcntl
        except ImportError:          # not POSIX: no cross-process lock, the rename stays atomic
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _normalize_formats(formats) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    fs = set(formats) | {"onnx"}          # ONNX is always built: it is what the tools inspect
    bad = fs - set(FORMATS)
    if bad:
        raise ValueError(f"unknown formats {sorted(bad)}; expected a subset of {FORMATS}")
    return tuple(f for f in FORMATS if f in fs)


def _supersets(formats: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Strictly larger format sets, in FORMATS order."""
    missing = [f for f in FORMATS if f not in formats]
    out = []
    for mask in range(1, 1 << len(missing)):
        extra = {missing[i] for i in range(len(missing)) if mask >> i & 1}
        out.append(tuple(f for f in FORMATS if f in formats or f in extra))
    return out


def ensure_model(name: str, models_dir: str | os.PathLike | None = None, seed: int = 0,
                 formats=("onnx",), onnx_file: str | os.PathLike | None = None,
                 weights_file: str | os.PathLike | None = None, progress: bool = True, *,
                 normalization: str | None = None, labels: list[str] | None = None,
                 in_process: bool | None = None) -> ModelInfo:
    """Return the built model ``name``, building and caching it on first use.

    ``formats``: "onnx" (always built) and optionally "savedmodel" (TF Serving layout). A cached
    build made with more formats also satisfies the request (builds are deterministic).
    ``onnx_file``: use this ONNX file as-is instead of building (copied into the cache; its input
    shape and outputs are read with ONNX Runtime); ``normalization`` / ``labels`` describe it
    (defaults: those of the known model ``name``, else "raw" / "class_i").
    ``weights_file``: Keras weights loaded into the architecture before export (e.g. a
    ``keras.weights.h5`` from an earlier build).
    ``in_process``: build in this process (True), in a child process (False), or in-process only
    if TensorFlow is already imported (None).
    """
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    formats = _normalize_formats(formats)
    if onnx_file is not None:
        if weights_file is not None:
            raise ValueError("give onnx_file or weights_file, not both")
        if "savedmodel" in formats:
            raise ValueError("onnx_file: cannot make a SavedModel from an ONNX file")
        if normalization is not None and normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}")
        onnx_file = Path(onnx_file)
        material = {"builder": BUILDER_VERSION, "name": name, "source": "onnx_file",
                    "onnx_sha256": file_sha256(onnx_file), "normalization": normalization,
                    "labels": labels}
    else:
        spec = get_spec(name)
        if normalization not in (None, spec.normalization):
            raise ValueError(f"{name} expects normalization {spec.normalization!r}")
        if labels is not None:
            raise ValueError("labels= is only for onnx_file models")
        if weights_file is not None:
            weights_file = Path(weights_file).resolve()
        material = {"builder": BUILDER_VERSION, "name": name, "source": "keras", "seed": int(seed),
                    "input_hw": list(spec.input_hw), "arch": spec.arch(), "formats": list(formats),
                    "versions": build_versions(),
                    "weights_sha256": file_sha256(weights_file) if weights_file else None}
        for more in _supersets(formats):             # e.g. an onnx+savedmodel build serves "onnx"
            hit = models_dir / f"{name}-{cache_key({**material, 'formats': list(more)})}"
            if (hit / META_FILE).is_file():
                return ModelInfo.load(hit)
    key = cache_key(material)
    final = models_dir / f"{name}-{key}"
    if (final / META_FILE).is_file():
        return ModelInfo.load(final)
    if onnx_file is None and not _can_build(models_dir):
        return _built_elsewhere(models_dir, name, material)

    models_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(models_dir / ".locks" / f"{name}-{key}.lock"):
        if (final / META_FILE).is_file():          # another process built it while we waited
            return ModelInfo.load(final)
        for stale in models_dir.glob(f".tmp-{name}-{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():                          # incomplete (no model.json): replace it
            shutil.rmtree(final)
        tmp = models_dir / f".tmp-{name}-{key}-{os.getpid()}"
        tmp.mkdir()
        t0 = time.perf_counter()
        try:
            if onnx_file is not None:
                _say(f"importing {name} from {onnx_file}...", progress)
                from .onnx_import import import_onnx
                import_onnx(name, onnx_file, tmp, key=key, normalization=normalization,
                            labels=labels)
            else:
                _build_keras(name, tmp, seed=int(seed), formats=formats,
                             weights_file=str(weights_file) if weights_file else None,
                             key=key, progress=progress, in_process=in_process)
            (tmp / BUILD_FILE).write_text(json.dumps(material, sort_keys=True, indent=1) + "\n")
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    _say(f"{name} done in {time.perf_counter() - t0:.1f} s -> {final}", progress)
    return ModelInfo.load(final)


def _writable(models_dir: Path) -> bool:
    d = models_dir
    while not d.exists() and d != d.parent:       # would be created: is its parent writable?
        d = d.parent
    return os.access(d, os.W_OK)


def _why_not_build(models_dir: Path) -> str:
    missing = [k for k, v in build_versions().items() if v == "missing"]
    why = [f"{', '.join(missing)} not installed"] if missing else []
    if not _writable(models_dir):
        why.append("the directory is read-only")
    return "; ".join(why)


def _can_build(models_dir: Path) -> bool:
    return not _why_not_build(models_dir)


def _built_elsewhere(models_dir: Path, name: str, material: dict) -> ModelInfo:
    """This process cannot build: the build of the same settings, by any build stack, or a clear
    error. Writes nothing."""
    found = find_build(models_dir, name, material)
    if found is None:
        raise FileNotFoundError(
            f"model {name!r} (seed {material['seed']}, formats {material['formats']}) is not in "
            f"{models_dir}, and it cannot be built here ({_why_not_build(models_dir)}): build it "
            f"where TensorFlow is installed, e.g. `python -m pipelines.models build {name} "
            f"--models-dir {models_dir}` (the compose `models` service does)")
    return found


def find_build(models_dir: str | os.PathLike, name: str, material: dict) -> ModelInfo | None:
    """The newest complete build of ``name`` whose ``build.json`` matches ``material`` in
    everything but the build-stack versions (and holds at least its formats). Reads only."""
    def settings(m: dict) -> dict:
        return {k: v for k, v in m.items() if k not in ("versions", "formats")}

    hits = []
    for f in Path(models_dir).glob(f"{name}-*/{BUILD_FILE}"):
        try:
            found = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if ((f.parent / META_FILE).is_file() and settings(found) == settings(material)
                and set(material.get("formats", ())) <= set(found.get("formats", ()))):
            hits.append(f.parent)
    if not hits:
        return None
    return ModelInfo.load(max(hits, key=lambda d: (d / META_FILE).stat().st_mtime))


def _build_keras(name: str, directory: Path, *, seed: int, formats, weights_file, key: str,
                 progress: bool, in_process: bool | None) -> None:
    req = {"seed": seed, "formats": list(formats), "weights_file": weights_file, "key": key}
    if in_process is None:
        in_process = "tensorflow" in sys.modules
    if in_process:
        from . import build
        if not progress:
            with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
                build.build(name, directory, **req)
        else:
            build.build(name, directory, **req)
        return
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "pipelines.models.build",
           json.dumps({"name": name, "directory": str(directory), **req})]
    tail: collections.deque[str] = collections.deque(maxlen=40)
    with subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, errors="replace") as proc:
        for line in proc.stderr:
            tail.append(line.rstrip("\n"))
            if progress and not _TF_NOISE.match(line):
                sys.stderr.write(line)
                sys.stderr.flush()
    if proc.returncode != 0:
        text = "\n".join(tail)
        raise RuntimeError(f"building {name} failed (exit {proc.returncode}):\n{text}")


def list_cached(models_dir: str | os.PathLike | None = None) -> list[ModelInfo]:
    """Every complete build in ``models_dir`` (sorted by name, then newest first)."""
    d = Path(models_dir) if models_dir is not None else default_models_dir()
    out = []
    for meta in d.glob(f"*/{META_FILE}"):
        if not meta.parent.name.startswith("."):
            try:
                out.append(ModelInfo.load(meta.parent))
            except (OSError, ValueError, KeyError):
                continue
    out.sort(key=lambda i: (i.name, -i.onnx_path.stat().st_mtime if i.onnx_path.exists() else 0))
    return out


__all__ = ["MODEL_NAMES", "SPECS", "FORMATS", "default_models_dir", "ensure_model", "list_cached",
           "cache_key", "build_versions", "find_build"]
