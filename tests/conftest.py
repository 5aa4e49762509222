"""Shared fixtures: paths of the repository and a runner for Snakemake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_snakemake(workdir: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    """Run the repository's workflow with ``workdir`` as working directory."""
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [str(snakemake), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def snakemake_runner():
    return run_snakemake


@pytest.fixture
def http_server():
    """A running :class:`httpserver.LocalServer` on 127.0.0.1; add files with ``http_server.files[path] = bytes``."""
    from httpserver import LocalServer

    with LocalServer() as server:
        yield server
