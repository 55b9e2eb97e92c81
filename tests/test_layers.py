"""The house rules, checked on the source (AST, nothing imported):

(a) imports run only downward: ``overhead.contract`` and ``overhead.config`` (bottom) <- ``brokers``
    <- ``pipelines`` <- ``deploy`` <- ``loadtest``; the analysis product (``analysis/`` except the
    lab) imports only ``overhead.contract`` and ``analysis``; the lab (``analysis/bench_*.py``,
    ``analysis/studies/``) may import anything and nothing outside the lab imports it;
    ``overhead/cli.py`` is the top and exempt;
(b) no ``sys.path.insert`` / ``sys.path.append`` outside ``tests/``;
(c) no module outside ``tests/`` over 400 lines;
(d) no import cycle between the top-level packages.

Every imported name is counted, at module level or inside a function (a lazy import is still a
dependency). Each failure lists every violation, one per line, as ``file:line: what``.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("overhead", "brokers", "pipelines", "deploy", "loadtest", "analysis")
MAX_LINES = 400

# unit -> rank; a module may import units of its own rank or lower (analysis has its own rule)
RANK = {"contract": 0, "config": 0, "brokers": 1, "pipelines": 2, "deploy": 3, "loadtest": 4,
        "analysis": 4}
ANALYSIS_MAY_IMPORT = {"contract", "analysis"}


def _source_files() -> list[Path]:
    """Every project .py file outside tests/ (tracked, or new and not ignored)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                              "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        files = [ROOT / p for p in out.split()]
    except (OSError, subprocess.CalledProcessError):
        files = [p for top in PROJECT for p in (ROOT / top).rglob("*.py")]
    return sorted(p for p in files if p.exists() and p.relative_to(ROOT).parts[0] in PROJECT)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str | None:
    """The layer unit of a dotted module name: contract, config, cli, lab, a top-level package,
    or None (not ours)."""
    parts = module.split(".")
    top = parts[0]
    if top not in PROJECT:
        return None
    if top == "overhead":
        sub = parts[1] if len(parts) > 1 else ""
        return {"contract": "contract", "config": "config", "cli": "cli"}.get(sub, "overhead")
    if top == "analysis" and len(parts) > 1 and (parts[1] == "studies" or parts[1].startswith("bench_")):
        return "lab"
    return top


def _imports(path: Path, tree: ast.AST) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # each imported name may be a module ("from overhead import config", "from analysis
            # import bench_x"): module.name places it in the right unit either way
            out += [(node.lineno, f"{mod}.{a.name}" if mod else a.name) for a in node.names]
    return out


@pytest.fixture(scope="module")
def parsed() -> dict[Path, ast.AST]:
    return {p: ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in _source_files()}


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def import_violations(parsed) -> list[str]:
    bad = []
    for path, tree in parsed.items():
        src = unit_of(_module_name(path))
        if src in ("cli", "lab", None):
            continue                      # the top and the lab may import anything
        for line, mod in _imports(path, tree):
            dst = unit_of(mod)
            if dst is None or dst == src:
                continue
            where = f"{_rel(path)}:{line}: {src} imports {mod}"
            if dst == "lab":
                bad.append(f"{where} (the product never imports the lab)")
            elif dst in ("cli", "overhead"):
                bad.append(f"{where} (only the top may import {dst})")
            elif src == "contract":
                bad.append(f"{where} (the contract imports nothing from the project)")
            elif src == "analysis" and dst not in ANALYSIS_MAY_IMPORT:
                bad.append(f"{where} (analysis reads the contract only)")
            elif src in RANK and RANK[dst] > RANK[src]:
                bad.append(f"{where} (a higher layer: {dst} is above {src})")
    return sorted(bad)


def test_imports_run_only_downward(parsed):
    bad = import_violations(parsed)
    assert not bad, f"{len(bad)} import(s) against the layers:\n" + "\n".join(bad)


def test_no_sys_path_hacks_outside_tests(parsed):
    bad = []
    for path, tree in parsed.items():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("insert", "append")
                    and ast.unparse(node.func.value) == "sys.path"):
                bad.append(f"{_rel(path)}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, f"{len(bad)} sys.path hack(s) (the package is installed editable):\n" + "\n".join(bad)


def test_no_module_over_400_lines(parsed):
    bad = []
    for path in parsed:
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            bad.append(f"{_rel(path)}: {n} lines (max {MAX_LINES})")
    assert not bad, f"{len(bad)} module(s) too long:\n" + "\n".join(sorted(bad))


def package_graph(parsed) -> dict[str, dict[str, list[str]]]:
    """unit -> imported unit -> the import sites (lab and cli left out: nothing may import them)."""
    g: dict[str, dict[str, list[str]]] = {}
    for path, tree in parsed.items():
        src = unit_of(_module_name(path))
        if src in ("cli", "lab", None):
            continue
        for line, mod in _imports(path, tree):
            dst = unit_of(mod)
            if dst not in (None, src, "cli", "lab"):
                g.setdefault(src, {}).setdefault(dst, []).append(f"{_rel(path)}:{line}")
    return g


def find_cycles(graph: dict[str, dict]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(graph) | {w for d in graph.values() for w in d}):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_packages(parsed):
    g = package_graph(parsed)
    bad = []
    for comp in find_cycles(g):
        lines = [f"cycle between {', '.join(comp)}:"]
        for a in comp:
            for b in comp:
                if b in g.get(a, {}):
                    sites = g[a][b]
                    lines.append(f"  {a} -> {b}: {', '.join(sites[:4])}"
                                 + (f" (+{len(sites) - 4} more)" if len(sites) > 4 else ""))
        bad.append("\n".join(lines))
    assert not bad, "\n".join(bad)


# -- the checker itself can fail: it finds planted violations -----------------------------------
def test_the_checks_find_planted_violations(tmp_path, monkeypatch):
    files = {
        "brokers/x.py": "from pipelines.worker import CROPS_TOPIC\n",                 # upward
        "pipelines/y.py": "import brokers\ndef f():\n    from loadtest import sweep\n",  # lazy, upward
        "analysis/z.py": "from deploy.triton import server\nfrom analysis import bench_x\n",
        "analysis/bench_x.py": "import loadtest.sweep\nimport sys\nsys.path.insert(0, '.')\n",
        "loadtest/w.py": "from .. import analysis\nimport brokers\n",
        "deploy/v.py": "from overhead import config\nfrom overhead import cli\n",
        "overhead/contract/r.py": "from brokers import base\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    trees = {tmp_path / rel: ast.parse(text) for rel, text in files.items()}
    bad = "\n".join(import_violations(trees))
    assert "brokers/x.py:1: brokers imports pipelines.worker" in bad
    assert "pipelines/y.py:3: pipelines imports loadtest" in bad
    assert "analysis/z.py:1: analysis imports deploy.triton" in bad
    assert "analysis/z.py:2: analysis imports analysis.bench_x (the product never imports the lab)" in bad
    assert "overhead/contract/r.py:1: contract imports brokers" in bad
    assert "bench_x" not in bad.replace("analysis.bench_x (the product", "")   # the lab is free
    assert "loadtest/w.py" not in bad      # relative import resolved (loadtest -> analysis is fine)
    assert "deploy/v.py:1" not in bad and "deploy/v.py:2: deploy imports overhead.cli" in bad
    # brokers -> pipelines (x.py), pipelines -> loadtest (y.py, lazily), loadtest -> brokers (w.py)
    assert find_cycles(package_graph(trees)) == [["brokers", "loadtest", "pipelines"]]
