"""The whole service through REAL brokers: a real gateway process (``--broker redis://...`` /
``kafka://...``, ``--workers 0``) plus N=2 ``python -m pipelines.worker`` processes, a real
redis-server / tansu, the real cached models and the corpus photos. Every answer must match the
gateway with ``memory://`` (same labels, same boxes). Then: ``kill -9`` of a worker mid-run (no
request lost, none counted twice), malformed crops (dead-lettered, worker alive), Redis down
(503 at once) and back (the gateway recovers by itself)."""
from __future__ import annotations

import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import RedisServer, TansuServer, ServerFailed, ServerMissing  # noqa: E402

import deploy.stack  # noqa: E402
from deploy.pipeline_processes import GatewayProcess, WorkerProcess  # noqa: E402

REDIS_OPTS = "claim_idle_ms=1500&claim_interval_ms=200&socket_timeout=2&connect_timeout=1"
KAFKA_OPTS = "session_timeout_ms=6000&heartbeat_interval_ms=1000&fetch_max_wait_ms=10"


@pytest.fixture(scope="module")
def real_models():
    from pipelines.models import ensure_model

    return ensure_model("ssd_mobilenetv2"), ensure_model("mobilenetv2")


@pytest.fixture(scope="module")
def photos():
    from pipelines.corpus import build_corpus

    return {img.name: Path(img.path).read_bytes()
            for img in build_corpus(sizes=("0.1MP", "1MP"))}


def _models_dir(real_models) -> str:
    return str(Path(real_models[0].onnx_path).parent.parent)


def _gateway(real_models, d: Path, broker: str, *extra) -> GatewayProcess:
    det, cls = real_models
    args = ["--detector", det.name, "--classifier", cls.name, "--models-dir",
            _models_dir(real_models), "--spans-dir", str(d / "spans"), "--intra-op-threads", "1",
            "--k", "4", "--score-threshold", "0.3", "--broker", broker, "--result-timeout-s", "20",
            "--publish-timeout-s", "1", "--threads", "4", *extra]
    return GatewayProcess(args, d / "gateway.log")


class Worker(WorkerProcess):
    """A classifier worker process (``deploy.pipeline_processes``); ``kill9()`` is a crash."""
    kill9 = WorkerProcess.kill

    @property
    def log(self) -> Path:
        return self.log_path

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


def _server(make):
    try:
        return make().start()
    except (ServerMissing, ServerFailed) as exc:
        pytest.fail(str(exc), pytrace=False)


class Stack(deploy.stack.Stack):
    """A broker server, a gateway with --workers 0 and N worker processes (``deploy.stack``),
    plus an HTTP client of the gateway."""

    def __init__(self, server, url, real_models, d: Path, n_workers=2):
        self.url = url
        wargs = ["--classifier", real_models[1].name, "--models-dir", _models_dir(real_models),
                 "--intra-op-threads", "1"]
        super().__init__(broker=server, gateway=_gateway(real_models, d, url, "--workers", "0"),
                         workers=[Worker(url, wargs, d / "logs" / f"worker-{i}.log", name=f"w{i}")
                                  for i in range(n_workers)])
        self.server = server
        self.client = None

    def start(self) -> "Stack":
        super().start(timeout_s=120)
        self.client = httpx.Client(base_url=self.gateway.url, timeout=40)
        return self

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        super().stop()


def _post(client, name, data, rid):
    return client.post("/v1/infer", content=data, headers={"X-Request-ID": rid})


def _essence(body: dict) -> list:
    return [(d["label"], d["class_id"], tuple(d["box"])) for d in body["detections"]]


@pytest.fixture(scope="module")
def reference(real_models, photos, tmp_path_factory):
    """Answers of the gateway with the in-process memory:// broker (and one in-process worker)."""
    d = tmp_path_factory.mktemp("memory")
    with _gateway(real_models, d, "memory://") as gw, httpx.Client(base_url=gw.url, timeout=40) as c:
        out = {}
        for name, data in photos.items():
            r = _post(c, name, data, f"ref-{name}")
            assert r.status_code == 200, r.text
            out[name] = r.json()
    assert any(b["k"] > 0 for b in out.values())
    return out


@pytest.fixture(scope="module")
def redis_stack(real_models, tmp_path_factory):
    d = tmp_path_factory.mktemp("redis-stack")
    server = _server(lambda: RedisServer(d / "redis"))
    stack = Stack(server, f"{server.url}?{REDIS_OPTS}", real_models, d).start()
    yield stack
    stack.stop()


def _send_all(client, photos, prefix, rounds=1, threads=4):
    jobs = [(name, data, f"{prefix}-{r}-{name}") for r in range(rounds)
            for name, data in photos.items()]
    with ThreadPoolExecutor(threads) as ex:
        resps = list(ex.map(lambda j: (j, _post(client, *j)), jobs))
    return resps


def _check_same(resps, reference):
    for (name, _data, rid), r in resps:
        assert r.status_code == 200, (rid, r.status_code, r.text)
        body = r.json()
        assert body["request_id"] == rid
        assert _essence(body) == _essence(reference[name]), name
        assert sorted(d["label"] for d in body["detections"]) and body["k"] == len(body["detections"])


# ------------------------------------------------------------------------------------ Redis
def test_redis_two_worker_processes_match_memory(redis_stack, photos, reference):
    resps = _send_all(redis_stack.client, photos, "redis", rounds=2)
    _check_same(resps, reference)
    st = redis_stack.client.get("/v1/stats").json()["pipeline"]
    assert st["in_flight"] == 0 and st["workers"] == []
    h = redis_stack.client.get("/healthz").json()
    assert h["broker"]["name"] and h["broker"]["ok"] is True
    # both worker processes took part (crops are spread over the consumer group)
    logs = [w.log.read_text() for w in redis_stack.workers]
    assert all(w.alive() for w in redis_stack.workers), logs


def test_redis_malformed_crops_are_dead_lettered_and_worker_keeps_serving(redis_stack, photos,
                                                                          reference):
    from brokers import open_broker
    from brokers.message import Message, encode_message

    b = open_broker(redis_stack.url)
    try:
        bad = [b"garbage, not a message",
               encode_message(Message(request_id="x", kind="result", dtype="json")),
               encode_message(Message(request_id="y", kind="crop", shape=(4, 4, 3), dtype="uint8",
                                      payload=b"\0" * 10))]   # wrong payload length
        for p in bad:
            b.publish("crops", p)
        deadline = time.monotonic() + 10
        got = []
        while time.monotonic() < deadline and len(got) < len(bad):
            got += b.consume("crops.dlq", "test-dlq", "t", max_messages=10, timeout_s=0.2)
        assert sorted(d.payload for d in got) == sorted(bad)
        assert all(d.key for d in got), [d.key for d in got]   # the reason
        reasons = " | ".join(d.key for d in got)
        assert "magic" in reasons and "kind" in reasons and "payload" in reasons, reasons
    finally:
        b.close()
    assert all(w.alive() for w in redis_stack.workers)
    name = next(iter(photos))
    r = _post(redis_stack.client, name, photos[name], "after-dlq")
    assert r.status_code == 200 and _essence(r.json()) == _essence(reference[name])


def _freeze_holding_work(victim, futs, holds, tries=60):
    """SIGSTOP the victim at a moment it holds undone work (``holds()`` returns it, non-empty);
    thaw and retry otherwise. Returns what it holds while frozen (it can no longer ack)."""
    while sum(f.done() for f in futs) < 3:
        time.sleep(0.01)
    for _ in range(tries):
        victim.freeze()
        time.sleep(0.3)
        held = holds()
        if held:
            return held
        victim.thaw()
        time.sleep(0.05)
    raise AssertionError("the victim never held undelivered work while requests were in flight")


def test_redis_kill9_worker_mid_run_loses_nothing(redis_stack, photos, reference):
    """The survivor takes over crops that Redis delivered to the killed worker: frozen (SIGSTOP)
    with entries in its pending list, then SIGKILLed; afterwards those very entries are acked,
    which only the survivor can have done, and only after publishing their results."""
    import redis

    from brokers.message import decode_message

    victim, survivor = redis_stack.workers
    r = redis.Redis.from_url(redis_stack.server.url)
    stream, group = "overhead:crops", "classifiers"

    def victims_entries():
        return [e["message_id"] for e in r.xpending_range(stream, group, min="-", max="+", count=1000,
                                                          consumername="w0")]

    jobs = [(name, data, f"kill-{r_}-{name}") for r_ in range(4) for name, data in photos.items()]
    with ThreadPoolExecutor(4) as ex:
        futs = [ex.submit(_post, redis_stack.client, *j) for j in jobs]
        held = _freeze_holding_work(victim, futs, victims_entries)
        crops = []
        for eid in held:                       # which crops the victim held (read before the kill)
            for _id, fields in r.xrange(stream, eid, eid):   # (gone if already claimed and acked)
                m = decode_message(fields[b"d"])
                crops.append((m.request_id, m.index))
        victim.kill9()
        resps = [(j, f.result()) for j, f in zip(jobs, futs)]
    _check_same(resps, reference)   # every request answered once, with k distinct crops
    assert survivor.alive()
    rids = {rid for (_n, _d, rid), _resp in resps}
    assert crops and all(rid in rids for rid, _i in crops), crops
    # the victim's entries were claimed and acked by the survivor: none is pending any more. The
    # survivor acks right after publishing the result (at-least-once order), so the answer can
    # arrive a moment before the ack: give the ack a few seconds.
    deadline = time.monotonic() + 5
    while True:
        still = {e["message_id"] for e in r.xpending_range(stream, group, min="-", max="+", count=1000)}
        if not still & set(held) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not still & set(held), (held, still)
    consumers = {_s(c["name"]): c["pending"] for c in r.xinfo_consumers(stream, group)}
    assert consumers.get("w0", 0) == 0, consumers
    st = redis_stack.client.get("/v1/stats").json()["pipeline"]
    assert st["in_flight"] == 0
    # a second result (a duplicate, or "late" once its request is done) can only come from a crop
    # the victim classified but did not ack
    assert st["duplicate_results"] + st["late_results"] <= len(held), (st, held)
    r.close()


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def test_redis_down_gives_503_fast_then_recovers(redis_stack, photos, reference):
    name = next(iter(photos))
    redis_stack.server.stop()
    t0 = time.monotonic()
    r = _post(redis_stack.client, name, photos[name], "down-1")
    took = time.monotonic() - t0
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["error"] in ("broker_unavailable", "overloaded") and body["message"]
    assert r.headers.get("retry-after")
    assert took < 8, took
    h = redis_stack.client.get("/healthz")
    assert h.json()["broker"]["ok"] is False
    redis_stack.server.start(30)          # same port, empty (no persistence)
    deadline = time.monotonic() + 30
    while True:
        r = _post(redis_stack.client, name, photos[name], f"up-{time.monotonic():.3f}")
        if r.status_code == 200:
            break
        assert time.monotonic() < deadline, r.text
        time.sleep(0.5)
    assert _essence(r.json()) == _essence(reference[name])
    assert redis_stack.workers[1].alive()


# ------------------------------------------------------------------------------------ Kafka
@pytest.fixture(scope="module")
def kafka_stack(real_models, tmp_path_factory):
    d = tmp_path_factory.mktemp("kafka-stack")
    server = _server(lambda: TansuServer(d / "tansu"))
    stack = Stack(server, f"{server.url}?{KAFKA_OPTS}", real_models, d).start()
    yield stack
    stack.stop()


def test_kafka_two_worker_processes_match_memory(kafka_stack, photos, reference):
    resps = _send_all(kafka_stack.client, photos, "kafka", rounds=1)
    _check_same(resps, reference)
    st = kafka_stack.client.get("/v1/stats").json()["pipeline"]
    assert st["in_flight"] == 0
    assert all(w.alive() for w in kafka_stack.workers)


def _kafka_offsets(url: str, topic: str, group: str) -> tuple[dict, dict]:
    """(end offset, committed offset) per partition of ``topic`` for ``group``."""
    from kafka import KafkaAdminClient, TopicPartition
    from kafka.admin import OffsetSpec

    admin = KafkaAdminClient(bootstrap_servers=url.split("://", 1)[1].split("?")[0],
                             request_timeout_ms=3000)
    try:
        parts = [p["partition_index"] for t in admin.describe_topics([topic]) for p in t["partitions"]]
        tps = [TopicPartition(topic, p) for p in parts]
        ends = {tp.partition: o.offset for tp, o in admin.list_partition_offsets(
            {tp: OffsetSpec.LATEST for tp in tps}).items()}
        got = admin.list_group_offsets({group: tps}).get(group, {})
        committed = {tp.partition: (o.offset if o is not None and o.offset is not None and o.offset >= 0
                                    else 0) for tp, o in got.items()}
    finally:
        admin.close()
    return ends, {p: committed.get(p, 0) for p in ends}


def test_kafka_kill9_worker_mid_run_loses_nothing(kafka_stack, photos, reference):
    """The survivor takes over the victim's partitions after the session timeout (6 s here) and
    resumes from the last committed offset: every request completes, duplicates are ignored.
    Proof of the takeover: while the victim is frozen (SIGSTOP) a partition whose committed offset
    stays behind its end offset is the victim's (the survivor commits its own as it goes); after
    the SIGKILL those records get committed, which only the survivor can do, after classifying."""
    victim, survivor = kafka_stack.workers
    topic, group = "overhead.crops", "overhead.crops.classifiers"

    def victims_backlog():
        e1, c1 = _kafka_offsets(kafka_stack.url, topic, group)
        time.sleep(0.5)
        e2, c2 = _kafka_offsets(kafka_stack.url, topic, group)
        # behind, and not advancing while the survivor works: held by the frozen victim
        return {p: (c2[p], e2[p]) for p in e2 if c2[p] < e2[p] and c2[p] == c1[p]}

    jobs = [(name, data, f"kkill-{r}-{name}") for r in range(2) for name, data in photos.items()]
    with ThreadPoolExecutor(4) as ex:
        futs = [ex.submit(_post, kafka_stack.client, *j) for j in jobs]
        held = _freeze_holding_work(victim, futs, victims_backlog, tries=20)
        victim.kill9()
        resps = [(j, f.result()) for j, f in zip(jobs, futs)]
    _check_same(resps, reference)
    assert survivor.alive()
    _ends, committed = _kafka_offsets(kafka_stack.url, topic, group)
    assert all(committed[p] >= end for p, (_c, end) in held.items()), (held, committed)
    st = kafka_stack.client.get("/v1/stats").json()["pipeline"]
    assert st["in_flight"] == 0
    # re-read from the committed offset: only records the victim had fetched before it froze
    # (at most end - committed of its partitions then) can come twice
    redo = sum(e - c for c, e in held.values())
    assert st["duplicate_results"] + st["late_results"] <= redo, (st, held)
