"""`make compose-test`, second half: the REAL deploy/docker-compose.yml on a real Docker engine.

    python tests/compose_e2e.py [--combos triton+redis,triton+kafka,tfserving+redis] [--keep]

Expects the images built by ``scripts/compose_test.sh`` (project images + local stand-ins) and
DOCKER_HOST pointing at an engine. For each server+broker combination:

1. ``docker-compose up -d --scale worker=2`` with the stand-in images in the OVERHEAD_*_IMAGE
   variables (the compose file is used as is), host ports free ones on 127.0.0.1;
2. waits for every healthcheck (and the one-shot ``models`` builder to exit 0); checks every
   running container's ``id -u`` is the non-root user its image declares;
3. POSTs real photos (pipelines/corpus.py) of 0.1, 1 and 8 MP to the gateway on 127.0.0.1;
4. a short headless sweep (``python -m loadtest.sweep --host http://gateway:8000``) in the compose
   Locust service, writing its run directory into the ``results`` volume; one worker container is
   ``docker kill``ed mid-sweep: every request must be answered (200, or an explicit 503), the
   other worker takes the crops over;
5. Redis combinations: the Redis container is stopped (the gateway must answer 503 with
   Retry-After), started again (AOF on its volume: a marker key survives) and the gateway must
   recover by itself;
6. copies the run directory out, runs ``python analysis/breakdown.py`` on it, checks the report
   has decode, resize, transfer, queue, inference and broker time (Triton: the server trace joined);
7. ``docker-compose down -v``: no container, volume or network of the project is left.

Prints one line per combination: requests, errors, e2e p50, largest component.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import io
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
STANDINS = {
    "OVERHEAD_TRITON_IMAGE": "overhead-standin/tritonserver:2.51",
    "OVERHEAD_REDIS_IMAGE": "overhead-standin/redis:7",
    "OVERHEAD_KAFKA_IMAGE": "overhead-standin/tansu:0.6",
    "OVERHEAD_TFSERVING_IMAGE": "overhead-standin/tfserving-double:0.1.0",
}
RUN = "run"                        # the sweep's run directory inside the results volume
STAGES_WANTED = ("decode", "resize", "transfer", "queue", "inference", "broker")


def log(msg: str) -> None:
    print(f"[compose-test {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(*argv, env=None, check=True, capture=True, timeout=900, input=None) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in argv], env=env, capture_output=capture, text=input is None
                       or isinstance(input, str), timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} -> rc {r.returncode}\n"
                           f"{(r.stdout or '')[-3000:]}\n{(r.stderr or '')[-3000:]}")
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Project:
    """One docker-compose project (one server+broker combination) on the real compose file."""

    def __init__(self, server: str, broker: str, workdir: Path):
        from deploy.services import compose_env

        self.server, self.broker = server, broker
        self.name = f"overheadct{server}{broker}"
        self.workdir = workdir
        self.gateway_port, self.locust_port = free_port(), free_port()
        self.env = dict(os.environ, **compose_env(server, broker), **STANDINS,
                        OVERHEAD_TRITON_FLAVOUR="python", OVERHEAD_SPANS_DIR=f"/results/{RUN}/spans",
                        OVERHEAD_GATEWAY_PORT=str(self.gateway_port),
                        OVERHEAD_LOCUST_PORT=str(self.locust_port),
                        OVERHEAD_TRITON_TRACE_LEVEL="TIMESTAMPS" if server == "triton" else "OFF")
        self.env.pop("COMPOSE_FILE", None)
        self.url = f"http://127.0.0.1:{self.gateway_port}"

    def compose(self, *args, **kw) -> subprocess.CompletedProcess:
        return sh("docker-compose", "-p", self.name, "-f", COMPOSE, *args, env=self.env, **kw)

    def containers(self, service: str | None = None, all_: bool = False) -> list[str]:
        argv = ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.name}"]
        if all_:
            argv.insert(2, "-a")
        if service:
            argv += ["--filter", f"label=com.docker.compose.service={service}"]
        return sh(*argv).stdout.split()

    def inspect(self, cid: str) -> dict:
        return json.loads(sh("docker", "inspect", cid).stdout)[0]

    def volume(self, name: str) -> str:
        return f"{self.name}_{name}"


# -- models volume: built once per models image, reused by the other combinations ------------------
def models_seed(cache_dir: Path) -> Path:
    image_id = sh("docker", "image", "inspect", "-f", "{{.Id}}", "overhead-models:0.1.0").stdout.strip()
    return cache_dir / f"models-cache-{image_id.split(':')[-1][:16]}.tar"


def seed_models_volume(p: Project, seed: Path) -> None:
    """Put the model cache of an earlier combination into this project's models volume (the
    one-shot builder then finds every model by its cache key and only rewrites the configs)."""
    if not seed.is_file():
        return
    vol = p.volume("models")
    sh("docker", "volume", "create", "--label", f"com.docker.compose.project={p.name}",
       "--label", "com.docker.compose.volume=models", vol)
    with open(seed, "rb") as f:
        r = subprocess.run(["docker", "run", "--rm", "-i", "-v", f"{vol}:/models", "--entrypoint",
                            "tar", "overhead-models:0.1.0", "-x", "-C", "/models"], stdin=f,
                           capture_output=True, timeout=300)
    if r.returncode:
        raise RuntimeError(f"seeding the models volume failed: {r.stderr[-2000:]}")
    log(f"models volume seeded from {seed.name}")


def save_models_seed(p: Project, seed: Path) -> None:
    if seed.is_file():
        return
    seed.parent.mkdir(parents=True, exist_ok=True)
    tmp = seed.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        subprocess.run(["docker", "run", "--rm", "-v", f"{p.volume('models')}:/models:ro",
                        "--entrypoint", "tar", "overhead-models:0.1.0", "-c", "-C", "/models", "cache"],
                       stdout=f, check=True, timeout=300)
    os.replace(tmp, seed)


# -- health, users ---------------------------------------------------------------------------------
def wait_healthy(p: Project, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        states = {}
        for cid in p.containers(all_=True):
            c = p.inspect(cid)
            svc = c["Config"]["Labels"]["com.docker.compose.service"]
            st = c["State"]
            if svc == "models":
                if st["Status"] == "exited" and st["ExitCode"] != 0:
                    raise RuntimeError("models builder failed:\n" + sh("docker", "logs", "--tail", "40", cid,
                                                                         check=False).stderr)
                states[c["Name"]] = "done" if st["Status"] == "exited" else st["Status"]
            else:
                states[c["Name"]] = st.get("Health", {}).get("Status", st["Status"])
        if states and all(s in ("done", "healthy") for s in states.values()):
            return
        bad = [n for n, s in states.items() if s in ("exited", "dead", "unhealthy")]
        if bad or time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n" + sh("docker", "logs", "--tail", "30", n.lstrip("/"),
                                                check=False).stderr[-2000:] for n in bad or states)
            raise RuntimeError(f"not healthy: {states}\n{logs}")
        time.sleep(3)


def check_users(p: Project) -> dict:
    """Every running container runs as the non-root user its image declares."""
    out = {}
    for cid in p.containers():
        c = p.inspect(cid)
        svc = c["Config"]["Labels"]["com.docker.compose.service"]
        declared = sh("docker", "image", "inspect", "-f", "{{.Config.User}}", c["Image"]).stdout.strip()
        uid = sh("docker", "exec", cid, "id", "-u").stdout.strip()
        want = declared.split(":")[0]
        if want and not want.isdigit():          # a user name: its uid inside the image
            want = sh("docker", "exec", cid, "id", "-u", want).stdout.strip()
        if not want or uid == "0" or uid != want:
            raise AssertionError(f"{svc}: runs as uid {uid}, image declares user {declared!r}")
        out[svc] = uid
    return out


# -- requests --------------------------------------------------------------------------------------
def post(url: str, data: bytes, rid: str, timeout: float = 60) -> tuple[int, dict, dict]:
    req = urllib.request.Request(f"{url}/v1/infer", data=data, method="POST",
                                 headers={"Content-Type": "image/jpeg", "X-Request-ID": rid})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"{}")


def photos() -> dict[str, bytes]:
    from pipelines.corpus import SIZE_CLASSES, load_photo, render

    photo = load_photo("china")
    return {size: render(photo, size) for size in SIZE_CLASSES}


def post_photos(p: Project, imgs: dict[str, bytes]) -> None:
    for size, data in imgs.items():
        code, _, body = post(p.url, data, f"photo-{size.replace('.', '_')}")
        assert code == 200, (size, code, body)
        log(f"  POST {size} ({len(data) // 1024} kB): 200, {len(body.get('detections', body.get('objects', [])))} "
            f"objects")


# -- sweep with a worker killed mid-way ------------------------------------------------------------
def sweep_with_worker_kill(p: Project, args) -> dict:
    argv = ["run", "--rm", "--no-deps", "-T", "locust-master", "python", "-m", "loadtest.sweep",
            "--out", f"/results/{RUN}", "--host", "http://gateway:8000", "--users", args.users,
            "--step-seconds", str(args.step_seconds), "--warmup-seconds", "3",
            "--sizes", "0.1MP,1MP,8MP", "--no-report", "--overwrite"]
    cmd = ["docker-compose", "-p", p.name, "-f", str(COMPOSE), *argv]
    logf = open(p.workdir / "sweep.log", "w")
    proc = subprocess.Popen(cmd, env=p.env, stdout=logf, stderr=subprocess.STDOUT)
    workers = p.containers("worker")
    assert len(workers) == 2, f"expected 2 worker containers, got {workers}"
    victim = workers[0]
    time.sleep(args.kill_after)
    if proc.poll() is not None:
        raise RuntimeError(f"the sweep ended before the kill: {(p.workdir / 'sweep.log').read_text()[-3000:]}")
    sh("docker", "kill", victim)
    at_kill = redis_pending(p) if p.broker == "redis" else {}
    log(f"  docker kill worker {victim[:12]} at +{args.kill_after:g} s of the sweep"
        + (f"; crops pending per Redis consumer: {at_kill}" if at_kill else ""))
    rc = proc.wait(timeout=900)
    logf.close()
    if rc:
        raise RuntimeError(f"sweep failed (rc {rc}): {(p.workdir / 'sweep.log').read_text()[-3000:]}")
    alive = p.containers("worker")
    assert victim[:12] not in [c[:12] for c in alive] and len(alive) == 1, (victim, alive)
    out = {"victim": victim[:12], "survivor": alive[0][:12]}
    if p.broker == "redis":     # the victim's unacknowledged crops were claimed by the survivor
        deadline = time.monotonic() + 60          # claimed once idle for claim_idle_ms
        while True:
            left = {k: v for k, v in redis_pending(p).items() if victim[:12] in k and v}
            if not left or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert not left, f"crops still pending on the killed worker after 60 s: {left}"
        out["victim_pending_at_kill"] = sum(v for k, v in at_kill.items() if victim[:12] in k)
        out["victim_pending_after"] = 0
    return out


def redis_pending(p: Project) -> dict[str, int]:
    """``{consumer: pending}`` of the crops stream's group (XINFO CONSUMERS)."""
    (rid,) = p.containers("redis")
    cli = ["docker", "exec", rid, "redis-cli", "-p", "6379"]
    groups = sh(*cli, "XINFO", "GROUPS", "overhead:crops").stdout.split("\n")
    out = {}
    for g in [groups[i + 1] for i, v in enumerate(groups[:-1]) if v == "name"]:
        lines = sh(*cli, "XINFO", "CONSUMERS", "overhead:crops", g).stdout.split("\n")
        name = None
        for i, v in enumerate(lines[:-1]):
            if v == "name":
                name = lines[i + 1]
            elif v == "pending" and name:
                out[name] = int(lines[i + 1])
    return out


def check_after_kill(p: Project, imgs: dict[str, bytes]) -> dict:
    """Crops go to the surviving worker; nothing is left in flight in the gateway."""
    for i in range(3):
        code, _, body = post(p.url, imgs["1MP"], f"after-kill-{i}")
        assert code == 200, (code, body)
    deadline = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(f"{p.url}/v1/stats", timeout=10) as r:
            st = json.loads(r.read()).get("pipeline", {})
        if st.get("in_flight", 0) == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert st.get("in_flight", 0) == 0, st
    return {k: st.get(k) for k in ("in_flight", "late_results", "duplicate_results")}


# -- Redis restart -----------------------------------------------------------------------------------
def redis_restart(p: Project, imgs: dict[str, bytes]) -> dict:
    (rid,) = p.containers("redis")
    cli = ["docker", "exec", rid, "redis-cli", "-p", "6379"]
    sh(*cli, "SET", "overhead:compose-test:marker", "kept")
    sh(*cli, "BGREWRITEAOF")
    time.sleep(1.5)                              # appendfsync everysec
    sh("docker", "stop", "-t", "5", rid)
    t0 = time.monotonic()
    code, headers, body = post(p.url, imgs["0.1MP"], "redis-down")
    took = time.monotonic() - t0
    retry = {k.lower(): v for k, v in headers.items()}.get("retry-after")
    assert code == 503 and retry, (code, headers, body)
    sh("docker", "start", rid)
    t1 = time.monotonic()
    while True:
        code, _, body = post(p.url, imgs["0.1MP"], f"redis-up-{int(time.monotonic() * 1000)}")
        if code == 200:
            break
        assert code == 503, (code, body)          # explicit, never silent
        assert time.monotonic() - t1 < 90, "the gateway did not recover after Redis came back"
        time.sleep(0.5)
    recovered = time.monotonic() - t1
    # then `docker restart` itself, under steady traffic: every answer is a 200 or a 503 with
    # Retry-After (explicit), and the gateway is back without any help
    codes = restart_under_traffic(p, rid, imgs["0.1MP"])
    kept = sh(*cli, "GET", "overhead:compose-test:marker").stdout.strip()
    assert kept == "kept", f"AOF: marker after restart = {kept!r}"
    return {"down_503_s": round(took, 2), "retry_after": retry,
            "recovered_s": round(recovered, 1), "aof_marker": kept, "during_docker_restart": codes}


def restart_under_traffic(p: Project, rid: str, data: bytes) -> dict:
    import threading

    codes: dict = {}
    slowest = [0.0]
    stop = threading.Event()

    def poster() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            t = time.monotonic()
            try:
                code, headers, _ = post(p.url, data, f"restart-{i}", timeout=40)
                slowest[0] = max(slowest[0], time.monotonic() - t)
            except OSError as exc:                 # no answer at all: silently lost
                code, headers = f"no answer: {exc}", {}
            if code == 503 and not {k.lower() for k in headers} >= {"retry-after"}:
                code = "503 without Retry-After"
            codes[code] = codes.get(code, 0) + 1
            time.sleep(0.05)

    t = threading.Thread(target=poster, daemon=True)
    t.start()
    time.sleep(1)
    sh("docker", "restart", "-t", "5", rid)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:             # until the gateway answers 200 again
        n200 = codes.get(200, 0)
        time.sleep(2)
        if codes.get(200, 0) > n200:
            break
    stop.set()
    t.join(60)
    assert set(codes) <= {200, 503}, f"during docker restart: {codes}"
    return {**codes, "slowest_s": round(slowest[0], 1)}


# -- run directory, Triton trace, report -----------------------------------------------------------
def copy_out(p: Project, dest: Path) -> Path:
    r = subprocess.run(["docker", "run", "--rm", "-v", f"{p.volume('results')}:/results:ro",
                        "--entrypoint", "tar", "overhead:0.1.0", "-c", "-C", "/results", RUN],
                       capture_output=True, timeout=300, env=p.env)
    if r.returncode:
        raise RuntimeError(r.stderr.decode()[-2000:])
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as t:
        t.extractall(dest, filter="data")
    return dest / RUN


def triton_trace(p: Project, run_dir: Path) -> dict:
    """Record Triton's per-model statistics, stop the app (open clients keep Triton from writing
    its trace), then Triton; copy the trace out, join it into the run's spans and put the serving
    summary into config.json (deploy/triton/sweep_server.py: the report's "Serving" section)."""
    from deploy.services import MODELS
    from deploy.triton.sweep_server import cross_check, join_spans_file
    from pipelines.inference.triton import read_trace

    (tid,) = p.containers("triton")
    stats = {}
    for m in MODELS:
        r = sh("docker", "exec", tid, "curl", "-fsS", f"http://127.0.0.1:8000/v2/models/{m}/stats",
               check=False)
        stats[m] = (json.loads(r.stdout).get("model_stats") or [{}])[0] if r.returncode == 0 else {}
    p.compose("stop", "-t", "10", "locust-worker", "locust-master", "gateway", "worker")
    p.compose("stop", "-t", "30", "triton")
    out = run_dir / "triton"
    out.mkdir(exist_ok=True)
    sh("docker", "cp", f"{tid}:/tmp/overhead-triton-trace.json", out / "trace.json")
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    trace = read_trace(out / "trace.json")
    detector, classifier = MODELS
    summary = {"server": "triton", "protocol": "grpc", "url": "grpc://triton:8001",
               "source": "compose: trace file copied out of the triton container",
               "stages": {"detect": {"server": "triton", "model": detector},
                          "classify": {"server": "triton", "model": classifier}},
               "join": join_spans_file(run_dir / "spans.parquet", trace),
               "cross_check": cross_check(trace, stats, MODELS)}
    cfg_path = run_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["serving"] = summary
    cfg_path.write_text(json.dumps(cfg, indent=1))
    return summary["join"]


def report(run_dir: Path) -> dict:
    r = sh(sys.executable, ROOT / "analysis" / "breakdown.py", run_dir, timeout=600)
    (run_dir / "breakdown.stdout.txt").write_text(r.stdout)
    csv = pd.read_csv(run_dir / "breakdown.csv")
    return {"stdout": r.stdout, "csv": csv}


def summary_line(combo: str, run_dir: Path, csv: pd.DataFrame) -> str:
    """requests, errors, e2e p50 (from the exact per-request records), largest component."""
    req = pd.read_parquet(run_dir / "requests.parquet")
    ok = req[req["status"] == 200] if "status" in req else req
    e2e_ms = (ok["recv_ns"] - ok["send_ns"]) / 1e6
    errors = len(req) - len(ok)
    comps = {c[: -len("_mean_ms")]: csv[c].mean() for c in csv.columns
             if c.endswith("_mean_ms") and not c.startswith(("e2e", "client-schedule"))}
    comps = {k: v for k, v in comps.items() if pd.notna(v)}
    top = max(comps, key=comps.get) if comps else "?"
    return (f"{combo:16s} requests={len(req):5d} errors={errors:3d} e2e_p50={e2e_ms.median():7.1f} ms "
            f"largest={top} ({comps.get(top, float('nan')):.1f} ms mean)")


def check_report(server: str, text: str, csv: pd.DataFrame) -> dict:
    """Every wanted component has a column in breakdown.csv with time in it (TF Serving has no
    per-request trace: its transfer is only the upload leg, the rest is in its inference), and
    for Triton the report's Serving section shows the joined trace."""
    means = {s: float(csv[f"{s}_mean_ms"].mean()) for s in STAGES_WANTED if f"{s}_mean_ms" in csv}
    missing = [s for s in STAGES_WANTED if not means.get(s, 0) > 0]
    if server == "triton" and "Triton trace joined into spans" not in text:
        missing.append("the joined Triton trace")
    if missing:
        raise AssertionError(f"the report lacks {missing} ({means}):\n{text[-3000:]}")
    return means


def run_combo(server: str, broker: str, args, imgs: dict[str, bytes], seed: Path) -> str:
    combo = f"{server}+{broker}"
    workdir = Path(args.out) / combo
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    p = Project(server, broker, workdir)
    if broker == "kafka":     # take-over after a kill within seconds; short fetch waits (tansu)
        p.env["OVERHEAD_BROKER"] = ("kafka://kafka:9092?session_timeout_ms=6000"
                                    "&heartbeat_interval_ms=1000&fetch_max_wait_ms=10")
    t0 = time.monotonic()
    try:
        p.compose("down", "-v", "--remove-orphans", check=False)
        seed_models_volume(p, seed)
        p.compose("up", "-d", "--no-build", "--scale", "worker=2", timeout=1200)
        wait_healthy(p)
        save_models_seed(p, seed)
        log(f"{combo}: every healthcheck passes after {time.monotonic() - t0:.0f} s; "
            f"gateway {p.url}")
        users = check_users(p)
        log(f"  non-root: {users}")
        post_photos(p, imgs)
        kill = sweep_with_worker_kill(p, args)
        kill.update(check_after_kill(p, imgs))
        log(f"  worker kill: {kill}")
        if broker == "redis":
            log(f"  redis restart: {redis_restart(p, imgs)}")
        run_dir = copy_out(p, workdir)
        if server == "triton":
            log(f"  triton trace joined: {triton_trace(p, run_dir)}")
        rep = report(run_dir)
        means = check_report(server, rep["stdout"] + (run_dir / "report.md").read_text(), rep["csv"])
        log("  report components, mean ms: " + ", ".join(f"{k} {v:.1f}" for k, v in means.items()))
        req = pd.read_parquet(run_dir / "requests.parquet")
        bad = req[~req["status"].isin([200, 503])] if "status" in req else req.iloc[0:0]
        assert bad.empty, f"requests neither answered nor explicitly refused:\n{bad.head(10)}"
        return summary_line(combo, run_dir, rep["csv"])
    except Exception:
        for cid in p.containers(all_=True):
            name = p.inspect(cid)["Name"].lstrip("/")
            (workdir / f"{name}.log").write_text(sh("docker", "logs", "--tail", "200", cid,
                                                    check=False).stdout + sh("docker", "logs", "--tail", "200", cid, check=False).stderr)
        log(f"{combo}: FAILED; container logs in {workdir}")
        raise
    finally:
        if not args.keep:
            p.compose("down", "-v", "--remove-orphans", "-t", "10", check=False, timeout=300)
            left = (p.containers(all_=True),
                    sh("docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={p.name}").stdout.split(),
                    sh("docker", "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={p.name}").stdout.split())
            assert not any(left), f"docker-compose down -v left {left}"
            log(f"{combo}: down -v left no container, volume or network ({time.monotonic() - t0:.0f} s)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python tests/compose_e2e.py", description=__doc__.split("\n")[0])
    ap.add_argument("--combos", default="triton+redis,triton+kafka,tfserving+redis")
    ap.add_argument("--out", default=str(ROOT / "runs" / "compose-test"))
    ap.add_argument("--cache-dir", default=os.environ.get("OVERHEAD_DOCKER_ROOT", "/var/tmp/overhead-docker"))
    ap.add_argument("--users", default="2,4")
    ap.add_argument("--step-seconds", type=float, default=15)
    ap.add_argument("--kill-after", type=float, default=12, help="seconds into the sweep")
    ap.add_argument("--keep", action="store_true", help="leave the last project running (debug)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    imgs = photos()
    seed = models_seed(Path(args.cache_dir))
    lines = []
    for combo in args.combos.split(","):
        server, broker = combo.split("+")
        lines.append(run_combo(server, broker, args, imgs, seed))
        log(lines[-1])
    print("\ncompose-test: the real deploy/docker-compose.yml, three combinations")
    for ln in lines:
        print("  " + ln)
    print(f"compose-test: {len(lines)} combination(s) passed in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
