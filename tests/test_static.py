"""Static checks of the files that only conda or a cluster would exercise
env files and profiles."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import REPO, run_snakemake

ENVS = sorted((REPO / "envs").glob("*.yaml"))
PROFILES = sorted((REPO / "profiles").glob("*/config.yaml"))
# Flags the SLURM executor plugin manages itself from `resources`.
MANAGED_FLAGS = ["--gres", "--gpus", "--mem", "--time", "--partition", "--account"]


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_files_use_conda_forge_and_pin_everything(env):
    spec = yaml.safe_load(env.read_text())
    assert spec["channels"] == ["conda-forge", "nodefaults"]
    for dep in spec["dependencies"]:
        if isinstance(dep, dict):
            for pip_dep in dep["pip"]:
                assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][^ ]*", pip_dep), f"{env.name}: unpinned pip {pip_dep}"
        else:
            assert re.fullmatch(r"[A-Za-z0-9_.-]+=[0-9][^ =]*", dep), f"{env.name}: unpinned {dep}"


def test_every_rule_names_an_existing_env_file():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().exists(), f"{smk.name}: conda env {env} does not exist"


def _runtimes(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "runtime":
                yield value
            else:
                yield from _runtimes(value)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.parent.name)
def test_profiles_parse_with_units_and_no_managed_slurm_flags(profile):
    spec = yaml.safe_load(profile.read_text())
    for runtime in _runtimes(spec):
        assert isinstance(runtime, str) and re.fullmatch(r"\d+[smhd]", runtime), f"runtime {runtime!r} lacks a unit"
    text = profile.read_text()
    for extra in re.findall(r"slurm_extra:\s*(.+)", text):
        for flag in MANAGED_FLAGS:
            assert flag not in extra, f"{profile}: slurm_extra carries {flag}, which the plugin manages"


def test_slurm_profile_builds_the_dag_with_gpu_resources(tmp_path):
    # env-modules instead of conda: conda is not installed on the test machines,
    # and no rule uses env modules, so this changes nothing else.
    result = run_snakemake(
        tmp_path,
        "-n",
        "--profile",
        str(REPO / "profiles" / "slurm"),
        "--sdm",
        "env-modules",
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # A neural method's training (the floors train no network and ask for no GPU).
    blocks = [b.split("rule ")[0] for b in result.stdout.split("rule train:")[1:]]
    train_block = next(b for b in blocks if "method=tiger," in b)
    assert "gpu=1" in train_block and "slurm_partition=gpu" in train_block
