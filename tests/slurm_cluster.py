"""A real SLURM cluster for tests: munge + slurmctld + slurmd on localhost (``nodes=2``: two slurmd daemons on
this host, nodes ``n1`` and ``n2`` on their own ports; ``gpus=N``: N GPUs per node that are plain files, so that
SLURM grants them and sets SLURM_GPUS_ON_NODE as on a GPU cluster while the processes run on CPU).

Uses Debian's ``slurm-wlm`` and ``munge`` (``.ci/run`` installs them). The node claims 16 CPUs
and 64 GB (``config_overrides``) whatever the machine has, so the batch scripts' production
resource requests (e.g. ``--cpus-per-task=8``) are accepted on a small test machine. The cluster
gets its own
configuration, state and spool folders and free ports under a temporary folder, runs as root
(as CI does), and is stopped at the end of the test session. Reusable by every stage's batch
scripts: ``submit`` a script, ``wait`` for jobs, read ``state``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    def __init__(self, root: Path, cpus: int = 16, memory_mb: int = 64000, nodes: int = 1, gpus: int = 0):
        self.root = Path(root)
        self.cpus, self.memory_mb, self.nodes, self.gpus = cpus, memory_mb, nodes, gpus
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._procs: list[subprocess.Popen] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 60) -> "SlurmCluster":
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._start_munge()
        host = socket.gethostname().split(".")[0]
        # One node is this host; several are slurmd daemons on this host, one per node name and port.
        names = [host] if self.nodes == 1 else [f"n{i + 1}" for i in range(self.nodes)]
        self.node_names = names
        gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        node_lines = "\n".join(
            f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={_free_port()} CPUs={self.cpus} "
            f"RealMemory={self.memory_mb}{gres} State=UNKNOWN" for name in names)
        # GPUs that are plain files: SLURM grants them (SLURM_GPUS_ON_NODE, CUDA_VISIBLE_DEVICES) as it would
        # real ones, and the processes, finding no CUDA, run on CPU.
        devices = self.root / "dev"
        devices.mkdir(parents=True, exist_ok=True)
        for i in range(self.gpus):
            (devices / f"gpu{i}").touch()
        (self.root / "gres.conf").write_text("AutoDetect=off\n" + "".join(
            f"NodeName={name} Name=gpu File={devices}/gpu[0-{self.gpus - 1}]\n" for name in names) if self.gpus else "")
        self.conf.write_text(f"""\
ClusterName=ctssltest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={self.root}/state
SlurmdSpoolDir={self.root}/spool/%n
SlurmctldPidFile={self.root}/slurmctld.pid
SlurmdPidFile={self.root}/slurmd-%n.pid
SlurmctldLogFile={self.root}/log/slurmctld.log
SlurmdLogFile={self.root}/log/slurmd-%n.log
SlurmctldPort={_free_port()}
{"GresTypes=gpu" if self.gpus else ""}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=600
SlurmdParameters=config_overrides
{node_lines}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        daemons = [("slurmctld", [])] + [("slurmd", [] if self.nodes == 1 else ["-N", name]) for name in names]
        for name in names:
            (self.root / "spool" / name).mkdir(parents=True, exist_ok=True)
        for daemon, extra in daemons:
            log = open(self.root / "log" / f"{daemon}{'-' + extra[1] if extra else ''}.stderr", "w")
            self._procs.append(subprocess.Popen([_binary(daemon), "-D", "-f", str(self.conf), *extra],
                                                stdout=log, stderr=subprocess.STDOUT, env=self.env))
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=self.env, capture_output=True, text=True)
            states = state.stdout.split()
            if state.returncode == 0 and len(states) == len(names) and all(
                    s in ("idle", "mix", "alloc") for s in states):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"SLURM did not come up in {timeout} s; logs in {self.root / 'log'}")

    def _start_munge(self) -> None:
        check = subprocess.run("munge -n | unmunge", shell=True, capture_output=True)
        if check.returncode == 0:
            return  # a munged is already running
        run_dir = Path("/run/munge")
        run_dir.mkdir(parents=True, exist_ok=True)
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["mungekey", "--create"], check=True)
        subprocess.run(["chown", "-R", "munge:munge", "/etc/munge", str(run_dir)], check=False)
        subprocess.run([_binary("munged"), "--force"], check=True, capture_output=True)
        for _ in range(20):
            if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
                return
            time.sleep(0.25)
        raise RuntimeError("munged did not start")

    def stop(self) -> None:
        subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True)
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._procs.clear()

    # ------------------------------------------------------------------ jobs
    def run(self, *args: str, env: dict | None = None, cwd: Path | None = None) -> str:
        out = subprocess.run(list(args), env={**self.env, **(env or {})}, cwd=cwd,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stderr}")
        return out.stdout

    def submit(self, script: Path, *args: str, sbatch_args: tuple[str, ...] = (),
               env: dict | None = None, cwd: Path | None = None) -> str:
        """Submit ``script`` with ``args``; returns the job id."""
        return self.run("sbatch", "--parsable", *sbatch_args, str(script), *args, env=env,
                        cwd=cwd).strip().split(";")[0]

    def states(self, job_id: str) -> dict[str, str]:
        """{job or array-task id: state} from scontrol (jobs stay listed for MinJobAge)."""
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=self.env,
                             capture_output=True, text=True).stdout
        states = {}
        for line in out.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            key = fields.get("JobId", "")
            if "ArrayTaskId" in fields:
                key = f"{fields.get('ArrayJobId')}_{fields['ArrayTaskId']}"
            states[key] = fields.get("JobState", "UNKNOWN")
        return states

    def wait(self, *job_ids: str, timeout: float = 600) -> dict[str, str]:
        """Wait until no job of ``job_ids`` is pending or running; returns final states."""
        deadline = time.time() + timeout
        while True:
            states = {}
            for job in job_ids:
                states.update(self.states(job))
            active = [s for s in states.values() if s in ("PENDING", "RUNNING", "CONFIGURING",
                                                          "COMPLETING", "REQUEUED", "SUSPENDED")]
            # A job waiting on a dependency that failed will never run.
            blocked = self._never_runs(job_ids)
            if not active or (blocked and len(active) == len(blocked)):
                return states
            if time.time() > deadline:
                raise TimeoutError(f"jobs {job_ids} still active after {timeout} s: {states}")
            time.sleep(1)

    def _never_runs(self, job_ids) -> list[str]:
        out = subprocess.run(["squeue", "-h", "-o", "%i %r", "-j", ",".join(job_ids)], env=self.env,
                             capture_output=True, text=True).stdout
        return [line.split()[0] for line in out.splitlines() if "DependencyNeverSatisfied" in line]
