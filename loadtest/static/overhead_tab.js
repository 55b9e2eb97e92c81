// The Overhead tab's panel (loadtest/overhead_tab.py): run directory, validity so far and one
// stacked bar per size class, above Locust's table of the same numbers. Polls while the tab is open.
(function () {
  // no greys: grey is "other" only
  const COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
                  "#9c755f", "#e15759", "#86bcb6", "#d37295", "#fabfd2", "#8cd17d",
                  "#499894", "#f1ce63", "#a0cbe8", "#ffbe7d", "#b6992d", "#d4a6c8"];
  const color = {};
  function colorOf(name) {
    if (name === "other") return "#d0d0d0";
    if (!(name in color)) color[name] = COLORS[Object.keys(color).length % COLORS.length];
    return color[name];
  }
  function esc(s) { return String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c])); }
  function isOpen() { return new URLSearchParams(location.search).get("tab") === "overhead"; }
  function anchor() {
    const t = document.querySelector("main table, table");
    return t ? (t.closest(".MuiTableContainer-root") || t) : null;
  }
  function render(panel, rows, st) {
    const v = (st && st.validity) || {};
    const step = v.step;
    let html = '<div style="font:14px sans-serif;margin:12px 0">';
    html += '<div><b>Run directory:</b> <code id="overhead-run-dir">' + esc(st.run_dir || "(starts with the first test)") + "</code></div>";
    html += '<div id="overhead-validity"><b>Validity so far:</b> ';
    html += step ? ("step with " + step.users + " users: " + step.requests + " requests, " + step.windows +
                    " full windows, " + (step.valid ? "stable" : "not yet valid (" + esc(step.reason) + ")"))
                 : "no test running";
    html += "; load generator CPU " + (v.generator_cores == null ? "n/a" : v.generator_cores.toFixed(2) + " cores") + "</div>";
    if (st.error) html += '<div style="color:#b00">analysis: ' + esc(st.error) + "</div>";
    html += '<div style="margin-top:8px">Mean request time per size class, split along the critical path (as in the report):</div>';
    const max = Math.max(1e-9, ...rows.map(r => r.e2e_mean_ms));
    for (const r of rows) {
      html += '<div class="overhead-bar-row" style="display:flex;align-items:center;margin:4px 0">';
      html += '<div style="width:90px">' + esc(r.size_class) + "</div>";
      html += '<div class="overhead-bar" style="display:flex;height:22px;width:' + (70 * r.e2e_mean_ms / max).toFixed(2) + '%">';
      for (const [name, ms] of Object.entries(r.components)) {
        if (ms <= 0) continue;
        html += '<div title="' + esc(name) + ": " + ms.toFixed(2) + ' ms" style="background:' + colorOf(name) +
                ";width:" + (100 * ms / r.e2e_mean_ms).toFixed(3) + '%"></div>';
      }
      html += "</div><div style=\"margin-left:8px\">" + r.e2e_mean_ms.toFixed(1) + " ms (" + r.requests + " requests)</div></div>";
    }
    if (!rows.length && st.records > 50) html += "<div>No spans found for " + st.records + " requests: start the gateway with <code>--spans-dir D</code> and Locust with <code>--overhead-spans-dir D</code>.</div>";
    else if (!rows.length) html += "<div>(no requests with spans yet: spans arrive ~2 s after their requests)</div>";
    // the legend: every segment drawn, in the bars' order, the grey "other" included
    const names = [];
    rows.forEach(r => Object.entries(r.components).forEach(([n, ms]) => { if (ms > 0 && !names.includes(n)) names.push(n); }));
    html += '<div id="overhead-legend" style="display:flex;flex-wrap:wrap;gap:10px;margin-top:6px">';
    for (const name of names) {
      html += '<span class="overhead-legend-item" data-name="' + esc(name) + '"><span style="display:inline-block;width:12px;height:12px;background:' + colorOf(name) + '"></span> ' + esc(name) + "</span>";
    }
    html += "</div>";
    if (names.includes("other"))
      html += '<div style="color:#555;margin-top:4px">other: time on the path no span covers (the client sending and ' +
              "receiving, HTTP parsing before the gateway admits the request, hand-offs between spans).</div>";
    panel.innerHTML = html + "</div>";
  }
  async function tick() {
    let panel = document.getElementById("overhead-panel");
    if (!isOpen()) { if (panel) panel.remove(); return; }
    const a = anchor();
    if (!a || !a.parentNode) return;
    if (!panel || panel.nextSibling !== a) {
      if (panel) panel.remove();
      panel = document.createElement("div");
      panel.id = "overhead-panel";
      a.parentNode.insertBefore(panel, a);
    }
    try {
      const [rows, st] = await Promise.all([fetch("/overhead/breakdown.json").then(r => r.json()),
                                            fetch("/overhead/status.json").then(r => r.json())]);
      rows.forEach(r => Object.keys(r.components).forEach(colorOf));
      render(panel, rows, st);
    } catch (e) { panel.textContent = "Overhead: " + e; }
  }
  setInterval(tick, 2000);
  window.addEventListener("popstate", tick);
  document.addEventListener("click", () => setTimeout(tick, 50));   // the tab opened: draw now
  tick();
})();
