"""The Locust web UI and the report as a person sees them, in a real browser: Debian's chromium
(headless, ``/usr/bin/chromium``) driven by Playwright, against the REAL gateway (seeded SSD +
MobileNetV2, as tests/test_webui.py) and the Locust UI on loopback ports.

Start a 2-user test from the form, read the Overhead tab while it runs (components present, their
sum within 5% of the request mean), stop, check the run directory, run the report and open
report.html in a 1,400 px window (it must not scroll sideways). Screenshots go to the test's tmp
folder (and to /tmp/ui-shots/ for a person to look at)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from deploy.probes import http_ok
from deploy.processes import ManagedProcess, free_port

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
SHOTS = Path("/tmp/ui-shots")

pytestmark = [pytest.mark.slow]   # a missing chromium fails: scripts/ensure_browser.sh installs it


def _manifest(tmp_path) -> Path:
    from pipelines.corpus import build_corpus

    imgs = build_corpus(sizes=("0.1MP", "1MP"), photos=("china", "astronaut"))
    path = tmp_path / "corpus.json"
    path.write_text(json.dumps([{"name": i.name, "size_class": i.size_class,
                                 "path": str(Path(i.path).resolve())} for i in imgs]))
    return path


def _shot(page, tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    page.screenshot(path=str(out), full_page=True)
    SHOTS.mkdir(exist_ok=True)
    shutil.copyfile(out, SHOTS / name)


@pytest.fixture
def locust_ui(tmp_path, real_gateway):
    """The Locust web UI (a ManagedProcess: own session, stopped by PID, its group killed if it
    lingers): ``(url, run_dir, log, process)``."""
    gw, spans_dir = real_gateway
    port = free_port()
    run_dir = tmp_path / "ui-run"
    web = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERHEAD_")}
    proc = ManagedProcess(
        "locust-ui", [PY, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py"), "--host", gw.url,
                      "--web-host", "127.0.0.1", "--web-port", str(port), "--overhead-run-dir", str(run_dir),
                      "--overhead-manifest", str(_manifest(tmp_path)), "--overhead-spans-dir", str(spans_dir),
                      "--overhead-warmup-seconds", "0", "--overhead-stability-window", "2"],
        tmp_path / "locust.log", ready=lambda: http_ok(web + "/", 2.0), env=env, cwd=tmp_path,
        stop_timeout_s=20)
    proc.start(timeout_s=90)
    try:
        yield web, run_dir, proc.log_path, proc
    finally:
        proc.stop()


def _wait(pred, timeout: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Exception as exc:
            last = exc
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{tail}")


def test_overhead_tab_live_then_a_readable_report(tmp_path, locust_ui):
    from playwright.sync_api import sync_playwright

    web, run_dir, log, proc = locust_ui
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(web + "/")
            # every --overhead-* option is in the form's advanced options, with the sweep's default
            page.get_by_text("Advanced options").click()
            warm = page.locator("input[name='overheadWarmupSeconds']")
            assert warm.count() == 1 and float(warm.input_value()) == 0
            assert page.locator("[name='overheadStabilityWindow']").count() == 1
            from overhead.config import LocustSettings
            html = page.content()     # every option is offered (Locust's templateArgs extra_options)
            missing = [n for n in LocustSettings.model_fields if f'"overhead_{n}"' not in html]
            assert not missing, missing
            page.locator("input[name='userCount']").fill("2")
            page.locator("input[name='spawnRate']").fill("2")
            _shot(page, tmp_path, "01-start-form.png")
            page.get_by_role("button", name="Start").click()
            page.get_by_role("tab", name="Overhead").click()
            panel = page.locator("#overhead-panel")

            def tab_numbers():
                rows = page.evaluate("fetch('/overhead/breakdown.json').then(r => r.json())")
                return rows if rows and all(r["requests"] >= 20 for r in rows) else None

            rows = _wait(tab_numbers, 90, "the Overhead tab's breakdown", log)
            for r in rows:   # both DNNs on the path (a batch's per-crop spans once went missing)
                assert {"detect-inference", "classify-inference"} <= set(r["components"]), r
            _wait(lambda: panel.locator(".overhead-bar div").count() >= 3, 20, "the stacked bars", log)
            # the table under the bars (Locust's extended table, refreshed with its stats poll) has
            # a "request (mean)" row and the components of each size class
            _wait(lambda: page.locator("table").inner_text().count("request (mean)") == len(rows), 20,
                  "the tab's table (refreshed with Locust's stats poll)", log)
            body = page.locator("table tbody tr")
            assert body.count() >= len(rows) * 3, page.locator("table").inner_text()
            cells = page.locator("table tbody tr td:nth-child(2)").all_inner_texts()
            assert "other" in cells and cells[0] == "request (mean)", cells   # the bars' order
            # the legend names every segment drawn, the grey "other" included
            legend = panel.locator(".overhead-legend-item").evaluate_all("els => els.map(e => e.dataset.name)")
            assert "other" in legend and any(n.startswith("detect-") for n in legend), legend
            def same_numbers():   # the bars (polled by the panel) caught up with the table
                table = page.locator("table").inner_text()
                return all(f"({r['requests']} requests)" in panel.inner_text() and
                           str(r["requests"]) in table for r in tab_numbers() or [])
            _wait(same_numbers, 20, "the bars and the table showing the same breakdown", log)
            status = page.evaluate("fetch('/overhead/status.json').then(r => r.json())")
            _shot(page, tmp_path, "02-overhead-tab.png")
            (tmp_path / "tab.json").write_text(json.dumps({"breakdown": rows, "status": status}, indent=1))
            shutil.copyfile(tmp_path / "tab.json", SHOTS / "tab.json")
            for r in rows:
                comps = r["components"]
                assert "other" in comps and any(k.startswith("detect-") for k in comps), comps
                assert any(k.startswith("classify-") for k in comps), comps
                assert abs(sum(comps.values()) - r["e2e_mean_ms"]) <= 0.05 * r["e2e_mean_ms"], r
            assert status["run_dir"] == str(run_dir.resolve())
            assert panel.locator("#overhead-run-dir").inner_text() == str(run_dir.resolve())
            assert status["validity"]["step"]["users"] == 2
            # Statistics: no "component" rows with integer-ms percentiles any more
            stats = page.evaluate("fetch('/stats/requests').then(r => r.json())")
            assert not [s for s in stats["stats"] if s["method"] == "component"]

            page.get_by_role("button", name="Stop").click()
            cfg_path = run_dir / "config.json"
            cfg = _wait(lambda: json.loads(cfg_path.read_text()).get("spans_merged_ns")
                        and json.loads(cfg_path.read_text()), 30, "the run directory", log)
            req = pd.read_parquet(run_dir / "requests.parquet")
            assert len(req) >= 10 and (req["status"] == 200).all()
            assert cfg["load_generator_cpu"] and cfg["load_generator_cpu"][0]["locust_cores"] > 0   # measured
            assert (run_dir / "cpu.parquet").exists()

            rep = subprocess.run([PY, "analysis/breakdown.py", str(run_dir)], capture_output=True,
                                 text=True, timeout=180, cwd=REPO)
            assert rep.returncode == 0, rep.stdout[-2000:] + rep.stderr[-2000:]
            assert "Load generator CPU was not recorded" not in (run_dir / "report.md").read_text()
            page.goto((run_dir / "report.html").as_uri())
            width = page.evaluate("document.documentElement.scrollWidth")
            _shot(page, tmp_path, "03-report.png")
            assert width <= 1400, f"report.html is {width} px wide in a 1,400 px window"
            assert not errors, errors
        finally:
            browser.close()
    pid = proc.pid
    proc.stop(30)
    assert proc.stopped_by == "SIGTERM", proc.log_tail()      # quit on SIGTERM, not killed
    assert not list(Path("/tmp").glob(f"overhead-ui-live-{pid}*"))
