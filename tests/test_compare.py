"""analysis/compare.py on small synthetic run directories (written with overhead.contract)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from analysis.compare import compare, compare_table, summarize_run  # noqa: E402
from overhead.contract.records import RequestRecord, Span, StepRecord  # noqa: E402
from overhead.contract.runconfig import write_config  # noqa: E402
from overhead.contract.rundir import RunDir, write_records  # noqa: E402


def make_run(path: Path, broker_ms: float, broker: str, users=(1, 2), seconds=10.0, warmup=1.0):
    """Closed loop, 1MP only: detect inference 20 ms, then one crop: broker_ms + 5 ms inference."""
    run = RunDir(path).create()
    t = 1_700_000_000_000_000_000
    steps, reqs, spans = [], [], []
    n = 0
    for i, u_count in enumerate(users):
        start, end = t, t + int(seconds * 1e9)
        steps.append(StepRecord(i, u_count, start, start + int(warmup * 1e9), end))
        for u in range(u_count):
            clock = start + u * 1000
            while True:
                rid = f"r{n:06d}"
                n += 1
                send = clock
                c = send + 1_000_000
                spans.append(Span(rid, "detect", "inference", c, c + 20_000_000, None))
                c += 20_000_000
                b = c + int(broker_ms * 1e6)
                spans.append(Span(rid, "classify", "broker", c, b, '{"crop": 0}'))
                spans.append(Span(rid, "classify", "inference", b, b + 5_000_000, '{"crop": 0}'))
                recv = b + 5_000_000 + 500_000
                if recv >= end:
                    break
                reqs.append(RequestRecord(rid, u, "china", "1MP", 150_000, send, send, recv, 200, None, "", 1))
                clock = recv
        t = end
    write_records(steps, StepRecord, run.steps)
    write_records(reqs, RequestRecord, run.requests)
    write_records(spans, Span, run.spans)
    write_config(run.path, {"run": {"status": "complete"}, "broker": {"requested": broker},
                            "workers": {"processes": 1},
                            "gateway": {"settings": {"broker": broker, "workers": 0}}})
    return run.path


def test_compare_side_by_side_highlights_broker(tmp_path):
    a = make_run(tmp_path / "mem", 0.2, "memory://")
    b = make_run(tmp_path / "redis", 10.0, "redis://local")
    ra, rb = summarize_run(a), summarize_run(b)
    head, rows, comps = compare_table([ra, rb])
    assert comps[0] == "broker" and comps[-1] == "other"
    assert head[:6] == ["users", "size", "run", "req/s", "p50 ms", "p99 ms"]
    assert [(r[0], r[1], r[2]) for r in rows] == [("1", "1MP", "mem"), ("1", "1MP", "redis"),
                                                  ("2", "1MP", "mem"), ("2", "1MP", "redis")]
    col = head.index("broker %")
    for mem_row, redis_row in (rows[0:2], rows[2:4]):
        assert float(redis_row[col]) > 5 * float(mem_row[col])
        assert float(redis_row[3]) < float(mem_row[3])          # throughput
        assert float(redis_row[4]) > float(mem_row[4]) + 9      # p50 ms
        shares = [float(v) for v in redis_row[6:]]
        assert abs(sum(shares) - 100) < 0.5                      # closure: shares + other = 100%
    out = compare([a, b])
    assert out == tmp_path / "compare.md"
    md = out.read_text()
    assert "**broker %**" in md and "`redis://local`" in md and "`memory://`" in md
    assert md.count("| 1 | 1MP |") == 2


def test_cli_writes_out_and_prints(tmp_path):
    a = make_run(tmp_path / "a", 1.0, "memory://", users=(1,))
    b = make_run(tmp_path / "b", 3.0, "kafka://local", users=(1,))
    out = tmp_path / "x" / "cmp.md"
    r = subprocess.run([sys.executable, str(REPO / "analysis" / "compare.py"), str(a), str(b),
                        "--out", str(out), "--label", "A", "--label", "B"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "broker %" in r.stdout and " A " in r.stdout and "kafka://local" in r.stdout
    assert out.exists() and "| A |" in out.read_text()
    r = subprocess.run([sys.executable, str(REPO / "analysis" / "compare.py"), str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not found" in r.stderr


def make_open_run(path: Path, rates=(70.0, 35.0), lag_ms=2.0, broker_ms=0.2, seconds=10.0, warmup=1.0):
    """Open loop (constant arrivals), 1MP only: one request every 1/rate s from the schedule, sent
    lag_ms after its intended time; same service as make_run (no queueing between requests)."""
    run = RunDir(path).create()
    t = 1_700_000_000_000_000_000
    steps, reqs, spans = [], [], []
    n = 0
    for i, rate in enumerate(rates):
        start, end = t, t + int(seconds * 1e9)
        steps.append(StepRecord(i, 1, start, start + int(warmup * 1e9), end))
        intended = start
        while True:
            rid = f"o{n:06d}"
            n += 1
            send = intended + int(lag_ms * 1e6)
            c = send + 1_000_000
            spans.append(Span(rid, "detect", "inference", c, c + 20_000_000, None))
            c += 20_000_000
            b = c + int(broker_ms * 1e6)
            spans.append(Span(rid, "classify", "broker", c, b, '{"crop": 0}'))
            spans.append(Span(rid, "classify", "inference", b, b + 5_000_000, '{"crop": 0}'))
            recv = b + 5_000_000 + 500_000
            if recv >= end:
                break
            reqs.append(RequestRecord(rid, 0, "china", "1MP", 150_000, intended, send, recv, 200, None, "", 1))
            intended += int(1e9 / rate)
        t = end
    write_records(steps, StepRecord, run.steps)
    write_records(reqs, RequestRecord, run.requests)
    write_records(spans, Span, run.spans)
    write_config(run.path, {"run": {"status": "complete"}, "broker": {"requested": "memory://"},
                            "load": {"arrivals": "constant", "rates": list(rates), "closed_loop": False},
                            "gateway": {"settings": {"broker": "memory://", "workers": 1}}})
    return run.path


def test_closed_vs_open_loop_order_and_throughput_match(tmp_path):
    from analysis.compare import loop_table

    closed = summarize_run(make_run(tmp_path / "closed", 0.2, "memory://", users=(1, 2)))
    opened = summarize_run(make_open_run(tmp_path / "open", rates=(70.0, 35.0)))
    assert not closed.open_loop and opened.open_loop and opened.rates == (70.0, 35.0)
    head, rows, comps = loop_table([closed, opened], "order")
    col = {h: i for i, h in enumerate(head)}
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [
        ("1", "closed", "closed", "1 user"), ("1", "open", "open", "70 req/s constant"),
        ("2", "closed", "closed", "2 users"), ("2", "open", "open", "35 req/s constant")]
    c1, o1 = rows[0], rows[1]
    assert c1[col["e2e from"]] == "send" and o1[col["e2e from"]] == "intended"
    assert float(c1[col["lag p99 ms"]]) == 0.0
    assert abs(float(o1[col["lag p50 ms"]]) - 2.0) < 0.01                      # the schedule lag
    assert abs(float(o1[col["p50 ms"]]) - float(c1[col["p50 ms"]]) - 2.0) < 0.05  # counted in e2e
    assert abs(float(o1[col["req/s"]]) - 70) < 1.5 and abs(float(c1[col["req/s"]]) - 37.5) < 1.5
    shares = [float(v) for v in o1[col["lag p99 ms"] + 1:] if v != "-"]
    assert abs(sum(shares) - 100) < 0.5                                        # closure incl. lag
    # throughput: closed 1 user (~37 req/s) pairs with 35 req/s, 2 users (~75) with 70 req/s
    _, rows_x, _ = loop_table([closed, opened], "throughput")
    assert [(r[0], r[4]) for r in rows_x] == [("1", "1 user"), ("1", "35 req/s constant"),
                                              ("2", "2 users"), ("2", "70 req/s constant")]


def test_cli_closed_vs_open(tmp_path):
    a = make_run(tmp_path / "c", 0.2, "memory://", users=(1, 2))
    b = make_open_run(tmp_path / "o")
    for match, first_open in (("order", "70 req/s"), ("throughput", "35 req/s")):
        out = tmp_path / f"{match}.md"
        args = [sys.executable, str(REPO / "analysis" / "compare.py"), str(a), str(b), "--out", str(out)]
        r = subprocess.run(args + (["--match", match] if match == "throughput" else []),
                           capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert r.returncode == 0, r.stderr
        md = out.read_text()
        assert f"paired by **{match}**" in md and "| open (constant) |" in md
        assert md.index("| 1 | 1MP | o | open | " + first_open) > md.index("| 1 | 1MP | c | closed | 1 user |")
    assert compare([a, b], out=tmp_path / "auto.md", quiet=True).read_text().count("intended") >= 2
