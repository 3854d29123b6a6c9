"""A real SLURM scheduler on localhost runs ``experiments/launch/slurm.sbatch``, as a user would.

The fixture writes a one-node ``slurm.conf`` (this machine is controller and compute node),
starts ``munged``, ``slurmctld`` and ``slurmd`` from Debian's ``slurm-wlm`` and ``munge``
packages (``.ci/run`` installs them; they must run as root), and stops them and removes their
state afterwards, also on failure. Without the binaries the test is skipped, with the reason.

The job: 2 tasks on CPU with one device each (``tests/test_multihost.py`` runs 2 x 2 fake
devices; one device per task compiles faster). ``--distributed`` must find the cluster in SLURM's
environment, ``scancel --signal=TERM`` must reach both training tasks (not only the batch shell),
both must save at the same step and exit cleanly, and a resubmitted job (with one task) must resume
there.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time

import pytest
from conftest import MULTI_PROCESS, REPO, write_photos
from test_train_loop import TINY_FLAGS

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.xdist_group(MULTI_PROCESS)]

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo", "srun")
NODE = "localhost"


def _find(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.path.exists(p := os.path.join(d, name))), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    """munged + slurmctld + slurmd for one node on localhost, all state under ``root``."""

    def __init__(self, root: str, binaries: dict[str, str]):
        self.root, self.bin = root, binaries
        self.procs: list[subprocess.Popen] = []
        self.conf = os.path.join(root, "slurm.conf")
        self.env = {**os.environ, "SLURM_CONF": self.conf}

    def path(self, *names: str) -> str:
        return os.path.join(self.root, *names)

    def _write_config(self) -> None:
        user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        for d in ("state", "spool", "munge"):
            os.makedirs(self.path(d), mode=0o700, exist_ok=True)
        key = self.path("munge", "munge.key")
        with open(key, "wb") as f:
            f.write(secrets.token_bytes(1024))
        os.chmod(key, 0o400)
        cpus = max(os.cpu_count() or 1, 2)  # 2 one-CPU tasks fit, even on a 1-core runner
        lines = [
            "ClusterName=jaxcolortest",
            f"SlurmctldHost={NODE}(127.0.0.1)",
            f"SlurmUser={user}",
            f"SlurmdUser={user}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.path('munge', 'munge.socket')}",
            f"StateSaveLocation={self.path('state')}",
            f"SlurmdSpoolDir={self.path('spool')}",
            f"SlurmctldPidFile={self.path('slurmctld.pid')}",
            f"SlurmdPidFile={self.path('slurmd.pid')}",
            f"SlurmctldLogFile={self.path('slurmctld.log')}",
            f"SlurmdLogFile={self.path('slurmd.log')}",
            "ProctrackType=proctrack/linuxproc",  # no cgroups needed (containers, CI)
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SchedulerType=sched/builtin",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",  # trust the CPU count below
            "MailProg=/bin/true",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "MinJobAge=600",  # keep finished jobs visible to scontrol for the checks
            f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
            f"PartitionName=test Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
        ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _start(self, *cmd: str, log: str) -> None:
        out = open(self.path(log), "w")  # noqa: SIM115 - closed with the process
        self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                           env=self.env, start_new_session=True))

    def start(self) -> None:
        self._write_config()
        munge = self.path("munge")
        self._start(self.bin["munged"], "--foreground", "--force",
                    f"--key-file={munge}/munge.key", f"--socket={munge}/munge.socket",
                    f"--pid-file={munge}/munged.pid", f"--seed-file={munge}/munged.seed",
                    f"--log-file={munge}/munged.log", log="munged.out")
        self._wait(lambda: os.path.exists(f"{munge}/munge.socket"), "munged", "munge/munged.log")
        self._start(self.bin["slurmctld"], "-D", "-i", "-f", self.conf, log="slurmctld.out")
        self._start(self.bin["slurmd"], "-D", "-N", NODE, "-f", self.conf, log="slurmd.out")
        self._wait(lambda: self.run("sinfo", "-h", "-o", "%T", check=False).strip() == "idle",
                   "an idle node", "slurmctld.log", "slurmd.log")

    def _wait(self, ready, what: str, *logs: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while not ready():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.time() > deadline:
                raise RuntimeError(f"SLURM on localhost: no {what} (exited: {dead})\n"
                                   + self.logs(*logs))
            time.sleep(0.5)

    def logs(self, *names: str) -> str:
        text = []
        for name in names + ("munged.out", "slurmctld.out", "slurmd.out"):
            if os.path.exists(self.path(name)):
                with open(self.path(name), errors="replace") as f:
                    text.append(f"--- {name}\n" + f.read()[-3000:])
        return "\n".join(text)

    def run(self, name: str, *args: str, check: bool = True) -> str:
        result = subprocess.run([self.bin[name], *args], capture_output=True, text=True,
                                env=self.env, timeout=60)
        if check and result.returncode:
            raise RuntimeError(f"{name} {' '.join(args)}: {result.stdout}{result.stderr}")
        return result.stdout

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, ExitCode, ...)."""
        text = self.run("scontrol", "show", "job", "-o", job_id)
        return dict(f.split("=", 1) for f in text.split() if "=" in f)

    def wait_job(self, job_id: str, timeout: float) -> dict[str, str]:
        deadline = time.time() + timeout
        while (info := self.job(job_id))["JobState"] in ("PENDING", "RUNNING", "COMPLETING",
                                                        "CONFIGURING"):
            if time.time() > deadline:
                raise TimeoutError(f"job {job_id} still {info['JobState']} after {timeout} s")
            time.sleep(1)
        return info

    def stop(self) -> None:
        """Cancels jobs, stops the daemons (newest first) and removes all state."""
        try:
            if self.procs and self.procs[-1].poll() is None:
                self.run("scancel", "--full", "--partition=test", check=False)
                deadline = time.time() + 30
                while self.run("squeue", "-h", check=False).strip() and time.time() < deadline:
                    time.sleep(0.5)
        finally:
            for p in reversed(self.procs):
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def slurm(tmp_path):
    binaries = {name: _find(name) for name in DAEMONS + CLIENTS}
    missing = [name for name, path in binaries.items() if path is None]
    if missing:
        reason = (f"SLURM binaries missing: {', '.join(missing)} "
                  "(apt-get install slurm-wlm munge; .ci/run installs them)")
        print(reason)
        pytest.skip(reason)
    cluster = LocalSlurm(str(tmp_path / "slurm"), binaries)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _submit(slurm: LocalSlurm, out_dir, workdir, photo_dir, num_steps: int, tasks: int = 2) -> str:
    """The repository's own sbatch script, for ``tasks`` CPU tasks with one device each."""
    env = ",".join(["ALL", "JAXCOLOR_CPU_DEVICES=1", "JAXCOLOR_DTYPE=float32",
                    f"WORKDIR={workdir}", f"PYTHON={sys.executable}", "PYTHONUNBUFFERED=1"])
    return slurm.run(
        "sbatch", "--parsable", "--nodes=1", f"--ntasks-per-node={tasks}", "--gpus-per-node=0",
        "--cpus-per-task=1", "--time=10", f"--chdir={REPO}", f"--export={env}",
        f"--output={out_dir}/slurm-%j.out",
        os.path.join(REPO, "experiments", "launch", "slurm.sbatch"), "experiments/lab_gan.py",
        f"--config.data.dir={photo_dir}", *TINY_FLAGS, f"--config.train.num_steps={num_steps}",
        "--config.train.image_every=100000", "--config.train.eval_every=100000",
    ).strip().split(";")[0]


def _read(path) -> str:
    return open(path, errors="replace").read() if os.path.exists(path) else ""


def test_slurm_job_detects_cluster_stops_on_signal_and_resumes(slurm, tmp_path):
    photo_dir = str(tmp_path / "photos")
    write_photos(photo_dir, 12)
    workdir = tmp_path / "run"

    first = _submit(slurm, tmp_path, workdir, photo_dir, 100000)
    out_path = tmp_path / f"slurm-{first}.out"
    deadline = time.time() + 300  # generous: shared CI machines
    while not re.search(r"^0: \[\s*2/100000", _read(out_path), re.M):
        info = slurm.job(first)
        assert info["JobState"] in ("PENDING", "RUNNING", "CONFIGURING"), (
            info, _read(out_path), slurm.logs("slurmd.log"))
        assert time.time() < deadline, _read(out_path) + slurm.logs("slurmd.log")
        time.sleep(0.5)
    slurm.run("scancel", "--signal=TERM", first)  # the documented preemption: to the job steps
    info = slurm.wait_job(first, timeout=300)
    out = _read(out_path)
    print(f"job {first}:\n{out}")
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, out)

    # --distributed found 2 processes, 2 devices, from SLURM's environment alone.
    assert "0: " in out and "2 device(s) (cpu), 2 process(es)" in out, out
    # Each task received SIGTERM itself and stopped, after saving, at the same step.
    stops = dict(re.findall(r"^(\d): .*?SIGTERM: stopped at step (\d+)", out, re.M))
    assert sorted(stops) == ["0", "1"], out
    assert len(set(stops.values())) == 1, stops
    stopped = int(stops["0"])
    assert stopped >= 2
    checkpoint = workdir / "checkpoints" / str(stopped)
    assert (checkpoint / "data" / "position.json").is_file(), os.listdir(checkpoint)

    # Resubmitted with one task, as BUILD.md allows ("any node or task count"): the job resumes
    # at that step, 2 -> 1 processes, and trains on. (tests/test_multihost.py resumes 2-process
    # runs; one process here compiles its step once, where 2 tasks would each compile it.)
    second = _submit(slurm, tmp_path, workdir, photo_dir, stopped + 2, tasks=1)
    info = slurm.wait_job(second, timeout=300)
    out2 = _read(tmp_path / f"slurm-{second}.out")
    print(f"job {second}:\n{out2}")
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, out2)
    assert "1 device(s) (cpu), 1 process(es)" in out2, out2
    assert f"0: resumed from step {stopped} " in out2, out2
    assert (workdir / "checkpoints" / str(stopped + 2)).is_dir()
    print(f"SLURM jobs {first} (stopped at step {stopped} by scancel --signal=TERM) and "
          f"{second} (resumed from {stopped}, done at {stopped + 2})")
