"""The workflow on a real one-node SLURM cluster, through profiles/slurm.

The module starts MUNGE and a single-node slurmctld + slurmd on 127.0.0.1
(Debian's ``slurm-wlm`` and ``munge``; ``make slurm`` installs them, and so
does :func:`slurm_missing` when run as root) with every file in a temporary
directory, and stops the daemons by their PID files afterwards. It is
skipped only when those packages cannot be installed.

The run uses profiles/slurm as a user would after filling it in: its
partitions set to the test cluster's one, and no conda (conda is not
installed on the test machines, so every job runs in this Python
environment). Accounting is off on this cluster, so the executor polls
``squeue`` and submits without an account. It runs a small slice of the
tiny test configuration (the synthetic dataset, MostPop and TIGER), which
still takes every kind of job through SLURM: features, pseudo-labels,
semantic IDs, training and evaluation. Then it checks that every output
exists, that each sbatch call carried the resources its job declares, and
that a training job cancelled mid-training (``scancel``) is retried by the
profile's retries and resumes from its checkpoint.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from test_workflow import write_ml100k_slice

from conftest import REPO, dry_run_jobs

PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
DEFAULT = REPO / "config" / "config.yaml"
TINY = REPO / "tests" / "configs" / "tiny.yaml"
PACKAGES = ["slurm-wlm", "munge"]
COMMANDS = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo"]
PARTITION = "pmsid"
# sbatch flag of each resource (snakemake_executor_plugin_slurm.submit_string).
FLAGS = {"slurm_partition": "-p", "runtime": "-t", "mem_mb": "--mem", "cpus_per_task": "--cpus-per-task="}


def _missing_commands() -> list[str]:
    return [c for c in COMMANDS if shutil.which(c) is None and not Path("/usr/sbin", c).exists()]


def slurm_missing() -> str | None:
    """Why the SLURM daemons are not available (None when they are): installs
    the Debian packages when run as root with apt-get, as ``make slurm`` does."""
    if not _missing_commands():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return (
            f"SLURM is not installed ({', '.join(_missing_commands())} missing) and installing needs root and apt-get"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *PACKAGES]
    if subprocess.run(install, capture_output=True, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        result = subprocess.run(install, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            return f"apt-get install {' '.join(PACKAGES)} failed: {result.stderr.strip()[-500:]}"
    missing = _missing_commands()
    return f"after installing {' '.join(PACKAGES)}, still missing: {', '.join(missing)}" if missing else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition, timeout: float, what: str, interval: float = 0.5):
    """Poll ``condition()`` until it returns a true value, which is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class Cluster:
    """MUNGE and a one-node SLURM cluster whose files all live in ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": f"{root / 'bin'}:{os.environ['PATH']}"}
        self.pid_files = {name: root / f"{name}.pid" for name in ("slurmd", "slurmctld", "munged")}

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr}\n{self.logs()}")
        return result

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.root.rglob("*.log"))
        )

    def start(self) -> None:
        munge_dir = self.root / "munge"
        munge_dir.mkdir()
        munge_dir.chmod(0o755)  # munged wants its socket directory open to all (x), owned by munge
        shutil.chown(munge_dir, "munge", "munge")
        key = Path("/etc/munge/munge.key")
        if not key.exists():  # the package makes one; create a private one if it did not
            key = munge_dir / "munge.key"
            subprocess.run(["runuser", "-u", "munge", "--", "mungekey", "-c", "-k", str(key)], check=True)
        socket_path = munge_dir / "munge.socket"
        subprocess.run(
            [
                "runuser", "-u", "munge", "--", "munged",
                f"--socket={socket_path}", f"--key-file={key}", f"--seed-file={munge_dir / 'seed'}",
                f"--pid-file={munge_dir / 'munged.pid'}", f"--log-file={munge_dir / 'munged.log'}",
            ],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        self.pid_files["munged"] = munge_dir / "munged.pid"
        _wait(socket_path.exists, 20, "munged's socket")

        # The node as slurmd sees it (CPUs, sockets, cores, memory), at 127.0.0.1.
        node = self.run("slurmd", "-C").stdout.splitlines()[0]
        name = re.search(r"NodeName=(\S+)", node)[1]
        self.cpus = int(re.search(r"CPUs=(\d+)", node)[1])
        for d in ("state", "spool"):
            (self.root / d).mkdir()
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=pmsidtest",
                    f"SlurmctldHost={socket.gethostname()}(127.0.0.1)",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={socket_path}",
                    f"StateSaveLocation={self.root / 'state'}",
                    f"SlurmdSpoolDir={self.root / 'spool'}",
                    f"SlurmctldPidFile={self.pid_files['slurmctld']}",
                    f"SlurmdPidFile={self.pid_files['slurmd']}",
                    f"SlurmctldLogFile={self.root / 'slurmctld.log'}",
                    f"SlurmdLogFile={self.root / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core_Memory",
                    "SchedulerType=sched/backfill",
                    "AccountingStorageType=accounting_storage/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "JobCompType=jobcomp/none",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "KillWait=5",
                    "MinJobAge=600",
                    f"{node} NodeAddr=127.0.0.1 State=UNKNOWN",
                    f"PartitionName={PARTITION} Nodes={name} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        # The executor's job step drops every SLURM_* variable, SLURM_CONF too,
        # before it calls srun inside the job: an srun first on PATH sets it again
        # (a cluster's own slurm.conf sits where srun looks by default).
        (self.root / "bin").mkdir()
        srun = self.root / "bin" / "srun"
        srun.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {shutil.which("srun")} "$@"\n')
        srun.chmod(0o755)
        self.run("slurmctld", "-f", str(self.conf))
        self.run("slurmd", "-f", str(self.conf), "-N", name)
        _wait(lambda: self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip() == "idle", 60, "an idle node")

    def stop(self) -> None:
        """Stop the daemons by their PID files, slurmd first."""
        for name, pid_file in self.pid_files.items():
            if not pid_file.exists():
                continue
            pid = int(pid_file.read_text().split()[0])
            try:
                os.kill(pid, signal.SIGTERM)
                _wait(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 30, f"{name} to stop", 0.2)
            except ProcessLookupError:
                pass
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)

    def jobs(self) -> list[dict]:
        """The cluster's jobs (finished ones too, for MinJobAge): id, name, state, comment."""
        out = self.run("squeue", "-h", "-t", "all", "-o", "%i|%j|%T|%k").stdout
        keys = ("id", "name", "state", "comment")
        return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line]


@pytest.fixture(scope="module")
def cluster():
    reason = slurm_missing()
    if reason:
        pytest.skip(f"no SLURM to test on: {reason} (make test installs slurm-wlm and munge when run as root)")
    # Not under pytest's tmp_path: the munge user must reach its socket directory.
    root = Path(tempfile.mkdtemp(prefix="pmsid-slurm-"))
    root.chmod(0o755)
    cluster = Cluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def write_profile(directory: Path) -> Path:
    """profiles/slurm as a user fills it in for this cluster: every partition
    is the cluster's one, and no conda. Nothing else of the profile changes."""
    spec = yaml.safe_load(PROFILE.read_text())
    filled = yaml.safe_load(PROFILE.read_text())
    filled.pop("software-deployment-method")
    for resources in [filled["default-resources"], *filled["set-resources"].values()]:
        if "slurm_partition" in resources:
            resources["slurm_partition"] = PARTITION
    changed = {k for k in spec if spec[k] != filled.get(k)}
    assert changed == {"software-deployment-method", "default-resources", "set-resources"}, changed
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(filled))
    return directory


def slice_config(directory: Path, **extra) -> Path:
    """The tiny configuration cut to the synthetic dataset, MostPop and TIGER
    (every method section's own datasets emptied), on the CPU: no job asks for a GPU."""
    default = yaml.safe_load(DEFAULT.read_text())
    config = {
        "datasets": ["synthetic"],
        "methods": ["mostpop", "tiger"],
        **{k: {"datasets": []} for k, v in default.items() if isinstance(v, dict) and "datasets" in v},
        "features": {"device": "cpu"},
    }
    for key, value in extra.items():
        config[key] = {**config.get(key, {}), **value}
    path = directory / f"slice{len(list(directory.glob('slice*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake_on_slurm(workdir: Path, profile: Path, *args: str) -> list[str]:
    """The command line of a run through the SLURM executor (``-v``: the
    plugin logs every sbatch call at debug level)."""
    snakemake = Path(sys.executable).with_name("snakemake")
    return [
        str(snakemake), "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--profile", str(profile), "--verbose",
        # Accounting is off on this cluster: poll squeue, submit without an account.
        "--slurm-status-command", "squeue", "--slurm-no-account",
        # Poll soon after submitting (40 s by default, for a real cluster's load).
        "--slurm-init-seconds-before-status-checks", "2",
        *args,
    ]  # fmt: skip


def run_env(cluster: Cluster) -> dict:
    return {**cluster.env, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def sbatch_calls(log: str) -> dict[str, str]:
    """The plugin's logged sbatch calls, by the job's comment (rule and wildcards)."""
    calls = {}
    for call in re.findall(r"sbatch call: (sbatch .*?) --wrap=", log):
        comment = re.search(r"--comment (\S+)", call)[1].strip("'")
        calls[comment] = call
    return calls


def declared_resources(dry_run: str) -> dict[str, dict[str, str]]:
    """Each job's resources as a dry run prints them, by the plugin's comment
    for the job (``rule_<name>_wildcards_<values joined by _>``)."""
    jobs = {}
    for block in re.split(r"^\[.*\]$", dry_run, flags=re.MULTILINE):
        rule = re.search(r"^(?:local)?rule (\w+):", block, flags=re.MULTILINE)
        resources = re.search(r"^\s+resources: (.*)$", block, flags=re.MULTILINE)
        if rule is None or resources is None:
            continue
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, flags=re.MULTILINE)
        values = [kv.split("=", 1)[1] for kv in wildcards[1].split(", ")] if wildcards else []
        comment = f"rule_{rule[1]}" + (f"_wildcards_{'_'.join(values)}" if values else "")
        jobs[comment] = dict(kv.split("=", 1) for kv in resources[1].split(", "))
    return jobs


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """The slice of the tiny configuration run through the SLURM executor."""
    tmp = tmp_path_factory.mktemp("slurm")
    workdir = tmp / "work"
    write_ml100k_slice(workdir / "resources" / "ml-100k-tiny")  # tiny.yaml names it
    profile = write_profile(tmp / "profile")
    configs = ["--configfile", str(DEFAULT), str(TINY), str(slice_config(tmp))]
    # The resources each job declares. A dry run caps threads at --cores (1 by
    # default), so it gets the node's CPUs, the most a job can have here.
    dry = subprocess.run(
        snakemake_on_slurm(workdir, profile, "-n", "--cores", str(cluster.cpus), *configs),
        capture_output=True, text=True, env=run_env(cluster), timeout=300,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr[-3000:]
    start = time.monotonic()
    result = subprocess.run(
        snakemake_on_slurm(workdir, profile, *configs),
        capture_output=True, text=True, env=run_env(cluster), timeout=1200,
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:] + cluster.logs()
    print(f"workflow on SLURM: {time.monotonic() - start:.0f} s")
    return {"workdir": workdir, "profile": profile, "configs": configs, "tmp": tmp, "log": log, "dry": dry.stdout}


@pytest.mark.slow
def test_workflow_runs_on_slurm_with_the_rules_resources(slurm_run, cluster):
    workdir, log = slurm_run["workdir"], slurm_run["log"]
    declared = declared_resources(slurm_run["dry"])
    calls = sbatch_calls(log)
    # Every job but the local ones (data generation, images, the report) went through sbatch.
    local = {"rule_synthetic_dataset", "rule_resolve_images_wildcards_synthetic", "rule_report", "rule_all"}
    assert set(calls) == set(declared) - local, (sorted(calls), sorted(declared))
    assert {c.split("_wildcards_")[0] for c in calls} == {
        "rule_prepare_dataset", "rule_text_features", "rule_image_features", "rule_pseudolabels",
        "rule_rqkmeans_ids", "rule_train", "rule_evaluate",
    }  # fmt: skip
    print(f"{len(calls)} SLURM jobs; e.g. {calls['rule_train_wildcards_synthetic_tiger_0']}")
    # Each sbatch call carried the partition, wall time (minutes), memory and
    # CPUs its job declares, and no GPU (features.device is cpu).
    for comment, call in calls.items():
        resources = declared[comment]
        for name, flag in FLAGS.items():
            value = resources[name]
            assert re.search(rf"(^| ){re.escape(flag)} ?'?{re.escape(value)}'?( |$)", call), (comment, name, call)
        assert "--gpus" not in call and "--gres" not in call, call
    # What the rules declare, not the profile's defaults (mem_mb 4000, runtime 1h).
    train = declared["rule_train_wildcards_synthetic_tiger_0"]
    assert (train["mem_mb"], train["runtime"], train["cpus_per_task"], train["gpu"]) == ("16000", "1440", "2", "0")
    assert declared["rule_prepare_dataset_wildcards_synthetic"]["cpus_per_task"] == "1"
    # The jobs ran on the cluster: SLURM knows them by the plugin's comments.
    assert {j["comment"] for j in cluster.jobs()} >= set(calls)
    # Every output of the run exists.
    dry = subprocess.run(
        snakemake_on_slurm(workdir, slurm_run["profile"], "-n", *slurm_run["configs"]),
        capture_output=True, text=True, env=run_env(cluster), timeout=300,
    )  # fmt: skip
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]
    for method in ("mostpop", "tiger"):
        for name in ("ranking", "per_user", "metrics"):
            assert (
                (workdir / "results" / "evaluate" / "synthetic" / method / "seed0" / f"{name}.parquet").stat().st_size
            )
    for modality in ("text", "image"):
        assert (workdir / "results" / "pseudolabels" / "synthetic" / "seed0" / f"{modality}.parquet").exists()
    assert (workdir / "results" / "report" / "main_comparison.csv").stat().st_size > 0


@pytest.mark.slow
def test_cancelled_training_job_is_retried_and_resumes_from_its_checkpoint(slurm_run, cluster):
    """scancel a TIGER training job after its first checkpoint: the profile's
    retries submit it again and the new job resumes after the saved epoch."""
    workdir, tmp = slurm_run["workdir"], slurm_run["tmp"]
    # More epochs (never stopping early) than the first run, so that training
    # lasts long enough to be cancelled half-way; a new config, a new checkpoint.
    longer = slice_config(tmp, tiger={"max_epochs": 8, "patience": 8})
    model = workdir / "results" / "train" / "synthetic" / "tiger" / "seed0" / "model.pt"
    checkpoint = workdir / "results" / "checkpoints" / "synthetic" / "tiger" / "seed0" / "last.pt"
    checkpoint.unlink(missing_ok=True)
    cmd = snakemake_on_slurm(
        workdir, slurm_run["profile"], str(model.relative_to(workdir)),
        "--configfile", str(DEFAULT), str(TINY), str(longer),
    )  # fmt: skip
    known = {j["id"] for j in cluster.jobs()}
    log_path = tmp / "cancelled_run.log"  # a file, not a pipe nobody reads while waiting
    with (
        log_path.open("w") as log,
        subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=run_env(cluster)) as run,
    ):
        try:
            job = _wait(
                lambda: next((j for j in cluster.jobs() if j["id"] not in known and j["state"] == "RUNNING"), None),
                180,
                "the training job to run",
                0.2,
            )
            assert job["comment"] == "rule_train_wildcards_synthetic_tiger_0", job
            _wait(checkpoint.exists, 180, "the first epoch's checkpoint", 0.1)
            cluster.run("scancel", job["id"])
            run.wait(timeout=600)
        finally:
            if run.poll() is None:
                run.kill()
    output = log_path.read_text()
    assert run.returncode == 0, output[-6000:]
    states = {j["id"]: j["state"] for j in cluster.jobs() if j["id"] not in known}
    assert states[job["id"]] == "CANCELLED" and list(states.values()).count("COMPLETED") == 1, states
    train_log = (workdir / "logs" / "train" / "synthetic_tiger_seed0.log").read_text()
    assert re.search(r"resuming from epoch [1-9]", train_log), train_log[-3000:]
    assert model.stat().st_size > 0


def test_gpu_resources_follow_features_device(tmp_path):
    """A config with a GPU device asks for one GPU per neural job (the plugin
    turns it into --gpus=1) and none for the floors; device cpu asks for none.
    A dry run: no cluster needed."""
    snakemake = Path(sys.executable).with_name("snakemake")
    profile = write_profile(tmp_path / "profile")
    found = {}
    for device in ("cuda", "cpu"):
        config = tmp_path / f"{device}.yaml"
        config.write_text(yaml.safe_dump({"features": {"device": device}}))
        result = subprocess.run(
            [
                str(snakemake), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "-n",
                "--profile", str(profile), "--configfile", str(DEFAULT), str(config),
            ],
            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        found[device] = {k: v.get("gpu") for k, v in declared_resources(result.stdout).items()}
        assert dry_run_jobs(result.stdout) >= {"train_tiger", "text_features", "image_features"}
    gpus = found["cuda"]
    for rule in ("text_features", "image_features"):
        assert gpus[f"rule_{rule}_wildcards_synthetic"] == "1"
    assert gpus["rule_pmat_attention_wildcards_synthetic_0"] == "1"
    for job in ("train", "evaluate"):
        assert gpus[f"rule_{job}_wildcards_ml-100k_tiger_0"] == "1"
        assert gpus[f"rule_{job}_wildcards_ml-100k_sasrec_0"] == "1"
        assert gpus[f"rule_{job}_wildcards_ml-100k_mostpop_0"] == "0"
    assert gpus["rule_prepare_dataset_wildcards_ml-100k"] is None  # a CPU rule declares no gpu
    assert {v for v in found["cpu"].values() if v is not None} == {"0"}
