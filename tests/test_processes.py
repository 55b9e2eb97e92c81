"""``deploy.processes.ManagedProcess`` and ``deploy.stack.Stack`` with REAL child processes:
readiness by probing (an HTTP server that opens its port late), the log tail in the error of a
process that exits during start-up, SIGTERM then SIGKILL of a process that ignores SIGTERM, the
whole process group stopped (a grandchild included), kill -9 and restart, and a Stack that
starts in order, stops in reverse and cleans up after a piece that fails to start."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.probes import http_ok  # noqa: E402
from deploy.processes import ManagedProcess, ProcessFailed, free_port  # noqa: E402
from deploy.stack import Stack  # noqa: E402

PY = sys.executable


def _http_server(port: int, delay_s: float = 0.0) -> list[str]:
    """A process that sleeps ``delay_s``, then serves 200 on every GET."""
    code = (f"import time, http.server; time.sleep({delay_s}); "
            "h = type('H', (http.server.BaseHTTPRequestHandler,), {'do_GET': lambda s: "
            "(s.send_response(200), s.end_headers()), 'log_message': lambda *a: None}); "
            f"http.server.HTTPServer(('127.0.0.1', {port}), h).serve_forever()")
    return [PY, "-c", code]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_free_port_is_free_and_never_repeats():
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20


def test_ready_by_probe_not_by_start(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    p = ManagedProcess("web", _http_server(port, delay_s=1.0), tmp_path / "web.log",
                       ready=lambda: http_ok(url))
    t0 = time.monotonic()
    with p:
        assert time.monotonic() - t0 >= 1.0          # waited for the port, not for the fork
        assert http_ok(url) and p.alive()
        pid = p.pid
        assert os.getpgid(pid) == pid                # its own session / process group
    assert not p.alive() and _gone(pid)
    assert p.stopped_by == "SIGTERM"
    assert (tmp_path / "web.log").read_text().startswith("$ ")   # the command line first


@pytest.mark.parametrize("code, timeout_s, message", [
    ("print('boom: no models', flush=True); raise SystemExit(3)", 20,
     r"(?s)child exited \(code 3\).*boom: no models"),                  # exits during start-up
    ("import time; print('loading', flush=True); time.sleep(60)", 1,
     r"(?s)child not ready after 1 s.*loading"),                          # hangs: stopped
])
def test_start_failure_raises_with_the_log_tail(tmp_path, code, timeout_s, message):
    p = ManagedProcess("child", [PY, "-c", code], tmp_path / "child.log", ready=lambda: False)
    with pytest.raises(ProcessFailed, match=message):
        p.start(timeout_s=timeout_s)
    assert not p.alive()


def test_sigterm_then_sigkill_and_the_whole_group(tmp_path):
    """The leader ignores SIGTERM and has a child (same group) that ignores it too: after the
    timeout both are SIGKILLed."""
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)']); "
            "print('ready', flush=True); time.sleep(120)")
    p = ManagedProcess("stubborn", [PY, "-c", code], tmp_path / "stubborn.log",
                       ready=lambda: "ready" in p.log_since_start())
    p.start(timeout_s=20)
    deadline = time.monotonic() + 10
    while not psutil.Process(p.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid, child = p.pid, psutil.Process(p.pid).children()[0].pid
    t0 = time.monotonic()
    code = p.stop(timeout_s=1.0)
    assert 1.0 <= time.monotonic() - t0 < 8
    assert p.stopped_by == "SIGKILL" and code == -signal.SIGKILL
    assert _gone(pid) and _gone(child)


def test_kill_and_restart(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    p = ManagedProcess("web", _http_server(port), tmp_path / "web.log", ready=lambda: http_ok(url),
                       retry_early_exit=True)
    p.start(timeout_s=20)
    first = p.pid
    assert p.kill() == -signal.SIGKILL and not http_ok(url) and _gone(first)
    p.restart(timeout_s=20)                       # same argv, same port
    assert p.alive() and p.pid != first and http_ok(url)
    assert p.stop() in (-signal.SIGTERM, 0)


def test_stack_order_failure_cleanup_and_reverse_stop(tmp_path):
    events = []
    port = free_port()

    def piece(name, argv, ready=None):
        def probe():
            ok = ready() if ready else True
            if ok and name not in events:
                events.append(name)
            return ok
        return ManagedProcess(name, argv, tmp_path / f"{name}.log", ready=probe)

    sleeper = [PY, "-c", "import time; time.sleep(60)"]
    srv = piece("server", _http_server(port, 0.5), lambda: http_ok(f"http://127.0.0.1:{port}/"))
    stack = Stack(server=srv, broker=piece("broker", sleeper), gateway=piece("gateway", sleeper),
                  workers=[piece("worker-0", sleeper)], say=lambda m: None)
    with stack.start(timeout_s=20):
        assert events == ["server", "broker", "gateway", "worker-0"]
        pids = stack.pids()
        assert list(pids) == events
        assert list(stack.cpu_pids()) == ["server", "broker-broker", "worker-0"]   # not the gateway
        stack.kill("worker-0")
        assert [p.name for p in stack.dead()] == ["worker-0"]
        stack.restart("worker-0", timeout_s=20)
        assert stack.dead() == []
    assert all(_gone(pid) for pid in pids.values())
    assert set(stack.exit_codes) == {"server", "broker", "gateway", "worker-0"}
    # a piece that fails: what started before it is stopped, the error names it
    bad = Stack(broker=piece("broker2", sleeper),
                gateway=ManagedProcess("gw", [PY, "-c", "raise SystemExit(2)"], tmp_path / "gw.log",
                                       ready=lambda: False), say=lambda m: None)
    with pytest.raises(ProcessFailed, match=r"gw exited \(code 2\)"):
        bad.start(timeout_s=20)
    assert bad.failed == "gw" and not bad.broker.alive() and bad.started == []
