"""The package's layers go one way and hold no import cycle.

data -> features -> quantize -> models -> train / evaluate -> methods ->
report, with ``runtime``, ``logs`` and ``defaults`` below everything and the
workflow-facing glue (``stages``, ``config``, ``sources``, ``manifest``) on top. Every
``pmsid`` import counts, including those inside functions.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pmsid.sources import PACKAGE, imports

from conftest import REPO

LAYERS = {
    "runtime": 0,
    "logs": 0,
    "defaults": 0,
    "data": 1,
    "features": 2,
    "quantize": 3,
    "models": 4,
    "train": 5,
    "evaluate": 5,
    "methods": 6,
    "report": 7,
    "stages": 8,
    "config": 8,
    "sources": 8,
    "manifest": 8,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    if top not in LAYERS:
        raise AssertionError(f"{module}: not in a known layer; add its sub-package to LAYERS")
    return LAYERS[top]


def graph() -> dict[str, set[str]]:
    edges = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        if name == "pmsid":
            continue
        # A sub-package import ("pmsid.data") means its __init__; keep the edge to the module itself.
        edges[name] = {m for m in imports(path) if m != name and m != "pmsid"}
    return edges


def test_no_module_imports_a_higher_layer():
    upward = [(a, b) for a, targets in graph().items() for b in targets if layer(b) > layer(a)]
    assert not upward, f"imports that go up a layer: {upward}"


def test_report_and_evaluation_import_no_method():
    offenders = [
        (a, b)
        for a, targets in graph().items()
        if a.startswith(("pmsid.report", "pmsid.evaluate"))
        for b in targets
        if b.startswith("pmsid.methods")
    ]
    assert not offenders, offenders


def test_the_import_graph_has_no_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node, stack):
        state[node] = 1
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(nxt) :] + [nxt])}")
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node, [node])


def test_the_cycle_check_finds_a_planted_cycle(monkeypatch):
    import test_layers

    monkeypatch.setattr(test_layers, "graph", lambda: {"pmsid.a": {"pmsid.b"}, "pmsid.b": {"pmsid.a"}})
    try:
        test_layers.test_the_import_graph_has_no_cycle()
    except AssertionError as err:
        assert "pmsid.a -> pmsid.b -> pmsid.a" in str(err) or "pmsid.b -> pmsid.a -> pmsid.b" in str(err)
    else:
        raise AssertionError("a planted cycle was not found")


def test_parse_time_modules_import_neither_torch_nor_pandas():
    """The Snakefile imports these while building the DAG."""
    code = (
        "import sys; sys.path.insert(0, 'workflow/scripts');"
        "import pmsid.config, pmsid.manifest, pmsid.sources, pmsid.methods.registry, pmsid.data.releases;"
        "bad = [m for m in ('torch', 'pandas', 'numpy') if m in sys.modules]; print(bad); assert not bad"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
