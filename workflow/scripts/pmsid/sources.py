"""The package's own source files a module depends on, for rule inputs.

Snakemake reruns a ``script:`` rule when its script changes, not when a
module the script imports changes. Rules therefore declare the package
modules they run as inputs; :func:`closure` finds them by following the
``pmsid`` imports (top-level and inside functions) of a module, so that a
change to any of them reruns the rule and a change elsewhere does not.
Standard library only: the Snakefile calls it at parse time.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def _module_file(name: str) -> Path | None:
    """The file of module ``pmsid.x.y`` (a package's ``__init__.py``), or None."""
    parts = name.split(".")[1:]
    base = PACKAGE.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


@functools.cache
def imports(path: Path) -> tuple[str, ...]:
    """Every ``pmsid`` module ``path`` imports, anywhere in the file."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.split(".")[0] == "pmsid"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pmsid":
            names.append(node.module)
            # ``from pmsid.x import y`` may import the module pmsid.x.y.
            names += [f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}")]
    return tuple(dict.fromkeys(names))


def closure(*modules: str) -> list[str]:
    """The files of ``modules`` and of every ``pmsid`` module they import, transitively.

    Parent packages' ``__init__.py`` files count too (Python runs them on
    import). Sorted paths, for stable rule inputs.
    """
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # the module and its parent packages
            path = _module_file(".".join(parts[:i]))
            if path is None:
                if i == len(parts):
                    raise ValueError(f"{name}: no such module in {PACKAGE}")
                continue
            if path not in seen:
                seen.add(path)
                todo += imports(path)
    return sorted(str(p) for p in seen)
