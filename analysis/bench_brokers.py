"""Broker adapter overhead: Overhead's broker classes vs the raw client, same round trip, one run.

One round trip = what a crop and its result do: publish a payload (100 KB) with a key to
``crops`` -> consume it in group ``workers`` -> ack -> publish a reply to ``results`` -> consume it
in group ``gateway`` -> ack. Adapter (``RedisStreamsBroker`` / ``KafkaBroker``) and raw client
(redis-py XADD/XREADGROUP/XACK+XDEL; kafka-python producer.send().get() / consumer.poll /
commit) alternate iteration by iteration (order flipped every iteration), against REAL servers
this script starts (redis-server, tansu) through ``tests/servers.py``. Prints p50/p99 per mode,
the ratio adapter/raw (target <= 1.5x) and CPU seconds of this process and of each server.
No asserts: it measures.

    .venv/bin/python analysis/bench_brokers.py [--n 300] [--size 100000] [--reply-size 100000]
                                               [--brokers redis,kafka] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from deploy.local_servers import RedisServer, TansuServer

KAFKA_GROUP_OPTS = dict(session_timeout_ms=6000, heartbeat_interval_ms=1000)


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))]


# ---------------------------------------------------------------------- adapter round trips
class AdapterTrip:
    def __init__(self, broker):
        self.b = broker

    def _get(self, topic, group):
        while True:
            ds = self.b.consume(topic, group, "c1", max_messages=1, timeout_s=1.0)
            if ds:
                return ds

    def __call__(self, rid, payload, reply):
        b = self.b
        b.publish("crops", payload, key=rid)
        ds = self._get("crops", "workers")
        b.ack("crops", "workers", ds)
        b.publish("results", reply, key=rid)
        rs = self._get("results", "gateway")
        b.ack("results", "gateway", rs)
        assert len(ds[0].payload) == len(payload) and len(rs[0].payload) == len(reply)


# ---------------------------------------------------------------------- raw redis-py
class RawRedisTrip:
    def __init__(self, url, maxlen=10000):
        import redis

        self.r = redis.Redis.from_url(url, decode_responses=False)
        self.maxlen = maxlen
        for s, g in (("raw:crops", "workers"), ("raw:results", "gateway")):
            try:
                self.r.xgroup_create(s, g, id="0", mkstream=True)
            except redis.ResponseError:
                pass

    def _get(self, stream, group):
        while True:
            resp = self.r.xreadgroup(group, "c1", {stream: ">"}, count=1, block=1000)
            if resp:
                return resp[0][1][0]

    def _ack(self, stream, group, eid):
        p = self.r.pipeline(transaction=False)
        p.xack(stream, group, eid)
        p.xdel(stream, eid)
        p.execute()

    def __call__(self, rid, payload, reply):
        r = self.r
        r.xadd("raw:crops", {b"d": payload, b"k": rid}, maxlen=self.maxlen, approximate=True)
        eid, fields = self._get("raw:crops", "workers")
        self._ack("raw:crops", "workers", eid)
        r.xadd("raw:results", {b"d": reply, b"k": rid}, maxlen=self.maxlen, approximate=True)
        eid2, fields2 = self._get("raw:results", "gateway")
        self._ack("raw:results", "gateway", eid2)
        assert len(fields[b"d"]) == len(payload) and len(fields2[b"d"]) == len(reply)

    def close(self):
        self.r.close()


# ---------------------------------------------------------------------- raw kafka-python
class RawKafkaTrip:
    def __init__(self, bootstrap, partitions=4, fetch_max_wait_ms=10):
        from kafka import KafkaConsumer, KafkaProducer
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        for t in ("raw.crops", "raw.results"):
            try:
                admin.create_topics([NewTopic(t, partitions, 1)])
            except TopicAlreadyExistsError:
                pass
        admin.close()
        self.p = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=0,
                               max_request_size=8 * 1024 * 1024)
        self.c = {}
        for t, g in (("raw.crops", "workers"), ("raw.results", "gateway")):
            # one group per topic (as the adapter does): a group spanning both topics would
            # rebalance whenever the member polling the other topic is idle
            c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=f"{t}.{g}", enable_auto_commit=False,
                              auto_offset_reset="earliest", fetch_max_wait_ms=fetch_max_wait_ms,
                              max_partition_fetch_bytes=8 * 1024 * 1024, **KAFKA_GROUP_OPTS)
            c.subscribe([t])
            self.c[t] = c

    def _get(self, topic):
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        c = self.c[topic]
        while True:
            recs = c.poll(timeout_ms=1000, max_records=1)
            for tp, rs in recs.items():
                r = rs[0]
                c.commit({TopicPartition(tp.topic, tp.partition):
                          OffsetAndMetadata(r.offset + 1, "", -1)})
                return r

    def __call__(self, rid, payload, reply):
        key = rid.encode()
        self.p.send("raw.crops", value=payload, key=key).get(5)
        r1 = self._get("raw.crops")
        self.p.send("raw.results", value=reply, key=key).get(5)
        r2 = self._get("raw.results")
        assert len(r1.value) == len(payload) and len(r2.value) == len(reply)

    def close(self):
        for c in self.c.values():
            c.close(autocommit=False)
        self.p.close()


# ---------------------------------------------------------------------- driver
def cpu_of(pid):
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except Exception:
        return float("nan")


def run_pair(label, adapter, raw, n, warmup, size, reply_size, server):
    payloads = [os.urandom(size) for _ in range(8)]
    reply = os.urandom(reply_size)
    modes = {"adapter": adapter, "raw": raw}
    lat = {m: [] for m in modes}
    cpu_self0, cpu_srv0 = time.process_time(), cpu_of(server.pid)
    t_start = time.monotonic()
    for i in range(warmup + n):
        order = ("adapter", "raw") if i % 2 == 0 else ("raw", "adapter")
        for m in order:
            rid = f"{m}-{i}"
            t0 = time.perf_counter_ns()
            modes[m](rid, payloads[i % len(payloads)], reply)
            dt = (time.perf_counter_ns() - t0) / 1e6
            if i >= warmup:
                lat[m].append(dt)
    wall = time.monotonic() - t_start
    cpu_self, cpu_srv = time.process_time() - cpu_self0, cpu_of(server.pid) - cpu_srv0
    res = {"broker": label, "n": n, "size": size, "reply_size": reply_size,
           "wall_s": round(wall, 2), "client_cpu_s": round(cpu_self, 2),
           "server_cpu_s": round(cpu_srv, 2)}
    for m, xs in lat.items():
        res[m] = {"p50_ms": round(pct(xs, 50), 3), "p99_ms": round(pct(xs, 99), 3),
                  "mean_ms": round(statistics.fmean(xs), 3)}
    res["ratio_p50"] = round(res["adapter"]["p50_ms"] / res["raw"]["p50_ms"], 2)
    res["ratio_p99"] = round(res["adapter"]["p99_ms"] / res["raw"]["p99_ms"], 2)
    return res


def bench_redis(args, workdir):
    from brokers.redis_streams import RedisStreamsBroker

    with RedisServer(os.path.join(workdir, "redis")) as server:
        adapter = RedisStreamsBroker.from_url(server.url, prefix="bench:")
        raw = RawRedisTrip(server.url)
        try:
            return run_pair("redis", AdapterTrip(adapter), raw, args.n, args.warmup, args.size,
                            args.reply_size, server)
        finally:
            adapter.close()
            raw.close()


def bench_kafka(args, workdir):
    from brokers.kafka import KafkaBroker

    with TansuServer(os.path.join(workdir, "tansu")) as server:
        adapter = KafkaBroker.from_url(server.url, prefix="bench.",
                                       fetch_max_wait_ms=args.fetch_max_wait_ms, **KAFKA_GROUP_OPTS)
        raw = RawKafkaTrip(server.bootstrap, fetch_max_wait_ms=args.fetch_max_wait_ms)
        try:
            # warm-up includes the group joins (~session_timeout/2 each)
            return run_pair("kafka", AdapterTrip(adapter), raw, args.n, args.warmup, args.size,
                            args.reply_size, server)
        finally:
            adapter.close()
            raw.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="measured round trips per mode")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--size", type=int, default=100_000, help="crop payload bytes")
    ap.add_argument("--reply-size", type=int, default=100_000, help="result payload bytes")
    ap.add_argument("--brokers", default="redis,kafka")
    ap.add_argument("--fetch-max-wait-ms", type=int, default=None,
                    help="Kafka consumers' fetch_max_wait_ms (default: the adapter's default)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.fetch_max_wait_ms is None:
        from brokers.kafka_config import OPTIONS

        args.fetch_max_wait_ms = OPTIONS["fetch_max_wait_ms"][1]
    import platform

    import kafka
    import redis

    print(f"python {platform.python_version()}, redis-py {redis.__version__}, "
          f"kafka-python {kafka.__version__}, cpus {os.cpu_count()}; n={args.n} "
          f"warmup={args.warmup} size={args.size} reply={args.reply_size}")
    results = []
    with tempfile.TemporaryDirectory(prefix="overhead-bench-") as workdir:
        for name in [b.strip() for b in args.brokers.split(",") if b.strip()]:
            fn = {"redis": bench_redis, "kafka": bench_kafka}[name]
            results.append(fn(args, workdir))
    hdr = (f"{'broker':7} {'mode':8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}   "
           f"{'ratio p50':>9} {'ratio p99':>9}  wall s  client CPU s  server CPU s")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        for m in ("adapter", "raw"):
            x = r[m]
            extra = (f"   {r['ratio_p50']:>9} {r['ratio_p99']:>9}  {r['wall_s']:>6}  "
                     f"{r['client_cpu_s']:>12}  {r['server_cpu_s']:>12}" if m == "adapter" else "")
            print(f"{r['broker']:7} {m:8} {x['p50_ms']:>8} {x['p99_ms']:>8} {x['mean_ms']:>8}"
                  f"{extra}")
    print("(ratio = adapter / raw, target <= 1.5; CPU seconds cover both modes of that broker)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
