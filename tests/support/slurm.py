"""A real two-node Slurm cluster on this machine, for tests (and for trying the sbatch scripts).

Installs Debian's Slurm packages if missing (apt-get, needs root), writes a private slurm.conf under a
work directory, maps two node names to 127.0.0.1 in /etc/hosts, starts munged (unless one runs),
slurmctld and one slurmd per node, and tears everything down again, restoring /etc/hosts.

    with SlurmCluster(tmp_path / "slurm") as cluster:
        job = cluster.sbatch(["launch/slurm_train.sbatch", "cfg.yaml"], cwd=repo)
        info = cluster.wait(job, timeout=120)      # {"JobState": "COMPLETED", "ExitCode": "0:0", ...}

Client commands run with SLURM_CONF pointing at the private config (`cluster.env`), so nothing under
/etc/slurm is touched. Facts behind the settings: ../shared/notes/slurm-on-one-machine.md.
`SlurmCluster.unavailable_reason()` says why a cluster cannot be started here (None if it can).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from pipeline.comm import free_port

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
HOSTS_FILE = Path("/etc/hosts")
HOSTS_MARK = "# lai-test-slurm-cluster"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


class SlurmError(RuntimeError):
    """The cluster could not be started, or a job did not reach the expected state."""


def _run(cmd: list[str], env: dict | None = None, timeout: float = 60, check: bool = True,
         **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise SlurmError(f"{' '.join(cmd)} exited {p.returncode}: {(p.stderr or p.stdout).strip()}")
    return p


def _wait_until(pred, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = pred()
        if result:
            return result
        time.sleep(interval)
    raise SlurmError(f"timed out after {timeout:.0f}s waiting for {what}")


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _terminate(pids: list[int], timeout: float = 15) -> None:
    """SIGTERM all of `pids`, wait for them to exit, SIGKILL what is left after `timeout`."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        _wait_until(lambda: not any(map(_alive, pids)), timeout, f"daemons {pids} to exit")
    except SlurmError:
        for pid in filter(_alive, pids):
            os.kill(pid, signal.SIGKILL)


def _topology() -> str:
    """The node line's hardware part, exactly as `slurmd -C` reports it (RealMemory trimmed)."""
    out = _run(["slurmd", "-C"]).stdout.splitlines()[0]
    fields = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
    mem = int(int(fields["RealMemory"]) * 0.9)
    keys = ["CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore"]
    return " ".join(f"{k}={fields[k]}" for k in keys if k in fields) + f" RealMemory={mem}"


def apt_install(packages: list[str]) -> None:
    """`apt-get install` (root), running `apt-get update` first if the plain install fails."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if _run(cmd, env=env, timeout=600, check=False).returncode != 0:
        _run(["apt-get", "update"], env=env, timeout=600)
        _run(cmd, env=env, timeout=600)


def install_slurm() -> None:
    """apt-get install the Slurm daemons, client and munge (no-op when they are present)."""
    if not all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
        apt_install(PACKAGES)


class SlurmCluster:
    """Context manager: a running 2-node (by default) Slurm cluster; see the module docstring."""

    def __init__(self, workdir: str | Path, nodes: int = 2, name_prefix: str = "lainode"):
        self.workdir = Path(workdir).resolve()
        self.nodes = [f"{name_prefix}{i + 1}" for i in range(nodes)]
        self.conf = self.workdir / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._started_munged = False
        self._hosts_backup: str | None = None

    # ---- availability -------------------------------------------------------------------
    @staticmethod
    def unavailable_reason() -> str | None:
        if os.geteuid() != 0:
            return "a real Slurm cluster needs root (daemons run as SlurmUser=root, /etc/hosts entries)"
        have = all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged"))
        if not have and not shutil.which("apt-get"):
            return "Slurm is not installed and apt-get is not available to install it"
        return None

    # ---- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> "SlurmCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        install_slurm()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "state").mkdir(exist_ok=True)
        self._write_conf()
        self._add_hosts()
        self._start_munge()
        ctld = self._daemon_log("slurmctld")
        subprocess.run(["slurmctld", "-i", "-f", str(self.conf)], env=self.env, check=True,
                       stdout=ctld, stderr=subprocess.STDOUT, timeout=30)
        _wait_until(lambda: "UP" in _run(["scontrol", "ping"], env=self.env, check=False).stdout,
                    30, "slurmctld to answer `scontrol ping`")
        for node in self.nodes:
            subprocess.run(["slurmd", "-f", str(self.conf), "-N", node], env=self.env, check=True,
                           stdout=self._daemon_log(f"slurmd-{node}"), stderr=subprocess.STDOUT,
                           timeout=30)

        def all_idle():
            out = _run(["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env, check=False).stdout
            states = dict(line.split() for line in out.splitlines() if line.strip())
            return all(states.get(n) == "idle" for n in self.nodes)

        _wait_until(all_idle, 60, f"nodes {self.nodes} to become idle (logs: {self.workdir})")

    def stop(self) -> None:
        if self.conf.exists() and shutil.which("scancel"):
            _run(["scancel", "--full", "-u", "root"], env=self.env, check=False, timeout=20)
        pidfiles = [self.workdir / f"slurmd-{n}.pid" for n in self.nodes]
        pidfiles.append(self.workdir / "slurmctld.pid")
        if self._started_munged:
            pidfiles.append(Path("/run/munge/munged.pid"))
            self._started_munged = False
        _terminate([pid for pid in map(_read_pid, pidfiles) if pid])
        self._restore_hosts()

    # ---- jobs ---------------------------------------------------------------------------
    def sbatch(self, args: list[str], cwd: str | Path, env: dict | None = None) -> int:
        """Submit `sbatch --parsable ARGS` from `cwd`; returns the job id."""
        p = _run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})}, cwd=cwd)
        return int(p.stdout.strip().split(";")[0])

    def job(self, job_id: int | str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, Restarts, NodeList, StdOut, ...)."""
        out = _run(["scontrol", "show", "job", "-o", str(job_id)], env=self.env).stdout
        return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", out))

    def jobs(self, job_id: int | str) -> list[dict[str, str]]:
        """All records of a job id; an array job has one record per task."""
        out = _run(["scontrol", "show", "job", "-o", str(job_id)], env=self.env).stdout
        return [dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", line))
                for line in out.splitlines() if line.strip()]

    def wait(self, job_id: int | str, timeout: float = 120) -> list[dict[str, str]]:
        """Wait until every record of `job_id` is in a final state; returns the records."""
        def done():
            recs = self.jobs(job_id)
            return recs if recs and all(r["JobState"] in FINAL_STATES for r in recs) else None
        try:
            return _wait_until(done, timeout, f"job {job_id} to finish", interval=0.5)
        except SlurmError as e:
            raise SlurmError(f"{e}; now: {self.jobs(job_id)}") from None

    def scontrol(self, *args: str) -> str:
        return _run(["scontrol", *args], env=self.env).stdout

    def scancel(self, *args: str) -> None:
        _run(["scancel", *args], env=self.env)

    # ---- internals ----------------------------------------------------------------------
    def _daemon_log(self, name: str):
        return open(self.workdir / f"{name}.stdout", "ab")

    def _write_conf(self) -> None:
        w = self.workdir
        host = socket.gethostname().split(".")[0]
        topo = _topology()
        ports = [free_port() for _ in range(len(self.nodes) + 1)]
        node_lines = "\n".join(
            f"NodeName={n} NodeAddr=127.0.0.1 Port={p} {topo} State=UNKNOWN"
            for n, p in zip(self.nodes, ports[1:]))
        self.conf.write_text(f"""\
ClusterName=laitest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again cred_expire + 1 s later: 5 is the minimum
AuthInfo=cred_expire=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
ReturnToService=2
MinJobAge=600
KillWait=10
StateSaveLocation={w}/state
SlurmdSpoolDir={w}/spool-%n
SlurmctldPidFile={w}/slurmctld.pid
SlurmdPidFile={w}/slurmd-%n.pid
SlurmctldLogFile={w}/slurmctld.log
SlurmdLogFile={w}/slurmd-%n.log
{node_lines}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def _add_hosts(self) -> None:
        text = HOSTS_FILE.read_text()
        self._hosts_backup = text
        kept = [ln for ln in text.splitlines() if HOSTS_MARK not in ln]
        kept.append(f"127.0.0.1 {' '.join(self.nodes)} {HOSTS_MARK}")
        HOSTS_FILE.write_text("\n".join(kept) + "\n")  # in place: /etc/hosts may be a bind mount

    def _restore_hosts(self) -> None:
        if self._hosts_backup is not None:
            HOSTS_FILE.write_text(self._hosts_backup)
            self._hosts_backup = None

    def _start_munge(self) -> None:
        if _run(["bash", "-c", "munge -n | unmunge"], check=False).returncode == 0:
            return  # a munged already answers
        _run(["install", "-d", "-o", "munge", "-g", "munge", "-m", "0755", "/run/munge"])
        if not Path("/etc/munge/munge.key").exists():
            _run(["mungekey", "--create"])
            _run(["chown", "munge:munge", "/etc/munge/munge.key"])
        _run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"])
        self._started_munged = True
        _wait_until(lambda: _run(["bash", "-c", "munge -n | unmunge"], check=False).returncode == 0,
                    15, "munged")
