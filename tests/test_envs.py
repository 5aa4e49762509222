"""The conda environments of envs/, checked statically (conda itself cannot run here).

Each env file parses, takes conda-forge with nodefaults, pins every package,
and holds every third-party package that the rules using it import: the
rule's script, and the code the rule declares as its input (``code=
get_code(...)`` / ``get_stage_code(...)``: the modules it runs, with every
``pmsid`` module they import, :func:`pmsid.sources.closure`; for the generic
train / evaluate rules, every registered method's module). Imports anywhere
in those files count, inside functions too. ``pmsid.logs`` is left out (every
script uses it); ``set_threads`` in a script means torch.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

from pmsid import sources
from pmsid.methods import registry

from conftest import REPO

RULES = REPO / "workflow" / "rules"
ENVS = sorted((REPO / "envs").glob("*.yaml"))
# Import name -> conda-forge package name, where they differ.
CONDA_NAME = {
    "torch": "pytorch",
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "PIL": "pillow",
    "open_clip": "open-clip-torch",
    "sentence_transformers": "sentence-transformers",
    "huggingface_hub": "huggingface_hub",
    "llama_cpp": "llama-cpp-python",
}
# Rules whose script dispatches to every registered method's module.
GENERIC_RULES = {"train", "evaluate"}


# The downloader's code is not a declared input (a change must not download again): named here.
UNDECLARED_CODE = {"download": ["pmsid.data.download"]}


def rule_code() -> dict[str, tuple[Path, Path, list[str]]]:
    """Every rule with a conda env and a script: ``{rule: (env file, script, code modules)}``."""
    found = {}
    for smk in sorted(RULES.glob("*.smk")):
        text = smk.read_text()
        # A block starts at `rule name:` (or the report loop's `rule:`) and runs to the next one.
        starts = list(re.finditer(r"^(?:rule (\w+):|    rule:\n)", text, flags=re.MULTILINE))
        for start, end in zip(starts, [*starts[1:], None]):
            block = text[start.start() : end.start() if end else len(text)]
            conda = re.search(r"conda:\s*\n\s*\"([^\"]+)\"", block)
            script = re.search(r"script:\s*\n\s*\"([^\"]+)\"", block)
            if not (conda and script):
                continue
            name = start[1] or "report"
            declared = re.search(r"code=get_(?:stage_)?code\(([^)]*)\)", block)
            modules = re.findall(r"\"(pmsid[\w.]*)\"", declared[1]) if declared else UNDECLARED_CODE.get(name, [])
            if "code=get_method_sources" in block:
                modules = ["pmsid.methods.run", *(spec.module for spec in registry.METHODS.values())]
            found[name] = ((RULES / conda[1]).resolve(), (RULES / script[1]).resolve(), modules)
    return found


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of the non-stdlib, non-pmsid modules ``path`` imports, anywhere in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("pmsid", "__future__")}


def packages(env: dict) -> dict[str, str]:
    """``{package: pinned version}`` of an env's dependencies (conda ``name=version``, pip ``name==version``)."""
    out = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):  # the pip list
            for pip in dep.get("pip", []):
                name, _, version = pip.partition("==")
                out[name.lower()] = version
        else:
            name, _, version = dep.partition("=")
            out[name.lower()] = version.lstrip("=")
    return out


def test_every_rule_with_a_script_names_an_env_and_its_code():
    rules = rule_code()
    assert {"train", "evaluate", "text_features", "image_features", "report", "rqkmeans_ids", "download"} <= set(rules)
    for rule, (env, script, modules) in rules.items():
        assert env.is_file(), (rule, env)
        assert script.is_file(), (rule, script)
        assert modules, f"{rule}: no code modules found"


@pytest.mark.parametrize("path", ENVS, ids=[p.stem for p in ENVS])
def test_env_file_parses_with_conda_forge_and_every_package_pinned(path):
    env = yaml.safe_load(path.read_text())
    assert env["channels"] == ["conda-forge", "nodefaults"], path.name
    for name, version in packages(env).items():
        assert re.fullmatch(r"\d+(\.\d+)*", version or ""), f"{path.name}: {name} is not pinned to one version"


def test_every_package_a_rule_imports_is_in_its_env():
    missing = []
    for rule, (env_path, script, modules) in sorted(rule_code().items()):
        files = [script, *(Path(f) for f in sources.closure(*modules) if not f.endswith("pmsid/logs.py"))]
        needed = {name: path for path in files for name in third_party_imports(path)}
        if "set_threads(" in script.read_text():
            needed.setdefault("torch", script)
        have = set(packages(yaml.safe_load(env_path.read_text())))
        for name, path in sorted(needed.items()):
            if CONDA_NAME.get(name, name.replace("_", "-")).lower() not in have:
                missing.append(f"{rule} ({env_path.name}): {name}, imported by {path.relative_to(REPO)}")
    assert not missing, "\n".join(missing)
