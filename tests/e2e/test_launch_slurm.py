"""The project's Slurm scripts on a real two-node Slurm cluster (two slurmd daemons on this machine):
data prep as tokenizer -> array -> merge jobs, training on 2 nodes x 1 CPU rank, and preemption
(USR1 to the batch script, or TERM to the job step as a time limit sends it, there under
train.backend=fsdp2 -> checkpoint -> exit 75 -> requeue -> resume) ending with the same losses as
an uninterrupted run. Needs root (and apt-get if Slurm is not installed); skipped with the reason
otherwise."""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from support import ROOT
from support.slurm import SlurmCluster, SlurmError, install_slurm

LAUNCH = ROOT / "launch"
STEPS = 30  # the preemption signal lands 2-4 steps after step 3 here: ample margin, few steps

_why_not = SlurmCluster.unavailable_reason()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_why_not is not None, reason=str(_why_not))]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        install_slurm()
    except (SlurmError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"Slurm is not installed and apt-get could not install it: {e}")
    with SlurmCluster(tmp_path_factory.mktemp("slurm-cluster")) as c:
        yield c


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slurm-work")


def job_env(work: Path) -> dict[str, str]:
    """What the jobs inherit from the submitting shell (sbatch --export=ALL): CPU ranks only (both
    "nodes" are this machine), and TMPDIR keeps `train.sh --slurm`'s hostfiles in the test dir."""
    (work / "tmp").mkdir(exist_ok=True)
    return {"LAI_ROOT": str(ROOT), "OMP_NUM_THREADS": "1", "RANKS_PER_NODE": "1",
            "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(work / "tmp")}


def show(cluster: SlurmCluster, job: int) -> str:
    """A failing test's context: the job records and the job's log."""
    rec = cluster.job(job)
    log = Path(rec.get("StdOut", ""))
    return f"{rec}\n--- {log}:\n{log.read_text()[-4000:] if log.is_file() else '(no log)'}"


def submit_prep(cluster: SlurmCluster, work: Path, *prep_args: str) -> list[int]:
    """launch/slurm_prep.sh --parts 2: tokenizer job -> 2-task array -> merge (afterok chain)."""
    p = subprocess.run([str(LAUNCH / "slurm_prep.sh"), "--parts", "2", "--", *prep_args],
                       cwd=work, env={**cluster.env, **job_env(work)}, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    m = re.search(r"tokenizer job (\d+) -> parts array job (\d+) \(0-1\) -> merge job (\d+)",
                  p.stdout)
    assert m, p.stdout
    return [int(j) for j in m.groups()]


@pytest.fixture(scope="module")
def prepared(cluster, work) -> tuple[Path, list[int]]:
    data = work / "data"
    jobs = submit_prep(cluster, work, "--source", "stdlib", "--max-docs", "60", "--vocab-size",
                       "512", "--val-fraction", "0.1", "--workers", "1", "--out", str(data))
    for j in jobs:
        cluster.wait(j, timeout=180)
    return data, jobs


def test_prep_failure_cancels_the_rest_of_the_chain(cluster, work):
    missing = work / "no-such-corpus"
    tok, arr, merge = submit_prep(cluster, work, "--source", f"text:{missing}", "--out",
                                  str(work / "bad"))
    rec = cluster.wait(tok, timeout=120)[0]
    assert rec["JobState"] == "FAILED" and rec["ExitCode"] == "2:0", show(cluster, tok)
    for j in (arr, merge):
        assert all(r["JobState"] == "CANCELLED" for r in cluster.wait(j, timeout=60)), show(cluster, j)
    log = Path(rec["StdOut"]).read_text()
    assert "error: " in log and str(missing) in log


def train_args(data: Path, out: Path) -> list[str]:
    return [str(ROOT / "configs" / "tiny_cpu.yaml"), f"data.sources=[{{path: {data}, weight: 1.0}}]",
            "data.seq_len=32", "model.n_layer=2", "model.hidden=64", "model.n_head=2",
            "train.micro_batch=2", "train.global_batch=0", f"train.steps={STEPS}",
            "train.warmup_steps=2",
            "train.eval_every=0", "lai.warmup_steps=0", "log.every=1", "log.histogram_every=0",
            "run.save_every=0", f"run.out_dir={out}"]


def losses(run: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("train/loss")}


@pytest.fixture(scope="module")
def reference(cluster, work, prepared) -> tuple[Path, int]:
    """An uninterrupted 2-node run of launch/slurm_train.sbatch."""
    data, _ = prepared
    out = work / "run-ref"
    job = cluster.sbatch([str(LAUNCH / "slurm_train.sbatch"), *train_args(data, out)], cwd=work,
                         env=job_env(work))
    cluster.wait(job, timeout=240)
    return out, job


def test_prep_array_job_writes_merged_shards(cluster, prepared):
    data, (tok, arr, merge) = prepared
    for j in (tok, arr, merge):
        recs = cluster.jobs(j)
        assert all(r["JobState"] == "COMPLETED" for r in recs), show(cluster, j)
    array_tasks = cluster.jobs(arr)
    assert sorted(r["ArrayTaskId"] for r in array_tasks) == ["0", "1"]
    assert cluster.job(arr)["Dependency"] in ("(null)", "")      # afterok satisfied

    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["stats"]["num_parts"] == 2
    assert manifest["tokenizer"]["vocab_size"] == 512
    splits = {s["split"] for s in manifest["shards"]}
    assert splits == {"train", "val"}
    for s in manifest["shards"]:
        assert (data / f"{s['prefix']}.bin").is_file() and (data / f"{s['prefix']}.idx").is_file()
    assert sum(s["num_docs"] for s in manifest["shards"]) == 60


def test_train_on_two_nodes(cluster, work, reference):
    out, job = reference
    rec = cluster.job(job)
    assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", show(cluster, job)
    assert rec["NumNodes"] == "2" and rec["Restarts"] == "0"
    log = Path(rec["StdOut"]).read_text()
    assert f"nodes {' '.join(cluster.nodes)}, master {cluster.nodes[0]}:{20000 + job % 20000}" in log
    for node in (0, 1):
        hostfile = work / "tmp" / f"lai-hostfile.{job}.{node}"
        assert hostfile.read_text().splitlines() == [f"{n} slots=1" for n in cluster.nodes]
        assert f"launch: node {node} of 2 from {hostfile}, 1 rank(s) here" in log
    assert json.loads((out / "ds_config.json").read_text())["train_batch_size"] == 2 * 2
    assert (out / "checkpoints" / f"step_{STEPS:08d}").is_dir()
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert sorted(losses(out)) == list(range(1, STEPS + 1))
    assert (out / "final").is_dir()


@pytest.mark.parametrize("sig,backend", [("USR1", "deepspeed"), ("TERM", "fsdp2")])
def test_preemption_saves_requeues_and_resumes_to_the_same_loss(cluster, work, prepared,
                                                                 reference, sig, backend):
    """USR1 to the batch script (the --signal=B:USR1 warning, forwarded to the ranks), or TERM
    to every process of the job step, launchers included (what the time limit sends, KillWait
    before its SIGKILL): the ranks save, exit 75, the job requeues and resumes. TERM runs under
    fsdp2, whose launchers are torchrun (static rendezvous at the first node; the deepspeed
    launcher's TERM path is e2e/test_launch_train.py's): its losses equal the DeepSpeed
    reference's (ZeRO 2 layout both) up to the backends' float summation order."""
    data, _ = prepared
    out = work / f"run-{sig}-{backend}"
    extra = [f"train.backend={backend}"]
    job = cluster.sbatch([str(LAUNCH / "slurm_train.sbatch"), *train_args(data, out), *extra],
                         cwd=work, env=job_env(work))

    # wait until training is under way (step 3 logged), then deliver the preemption warning
    deadline = time.monotonic() + 180
    while True:
        rec = cluster.job(job)
        log = Path(rec["StdOut"])
        if log.is_file() and f"step 3/{STEPS}" in log.read_text():
            break
        assert rec["JobState"] in ("PENDING", "RUNNING"), show(cluster, job)
        assert time.monotonic() < deadline, show(cluster, job)
        time.sleep(0.3)
    cluster.scancel(f"--signal={sig}", *(["--batch"] if sig == "USR1" else []), str(job))

    rec = cluster.wait(job, timeout=300)[0]
    assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", show(cluster, job)
    assert rec["Restarts"] == "1", show(cluster, job)
    text = Path(rec["StdOut"]).read_text()         # --open-mode=append: both runs in one log
    if sig == "USR1":
        assert "USR1 received: asking the trainers to save a checkpoint and stop" in text
    m = re.search(rf"stopped by SIG{sig} at step (\d+)", text)
    assert m, show(cluster, job)
    stopped_at = int(m.group(1))
    assert 3 <= stopped_at < STEPS
    assert (out / "checkpoints" / f"step_{stopped_at:08d}").is_dir()   # saved on the signal
    assert f"requeueing job {job}" in text and f"job {job} (restart 1)" in text
    assert (out / "final").is_dir()

    ref = losses(reference[0])
    got = losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    rel = 1e-6 if backend == "deepspeed" else 1e-4
    steps = range(stopped_at + 1, STEPS + 1) if backend == "deepspeed" else range(1, STEPS + 1)
    for step in steps:                                  # after the resume, step for step
        assert got[step] == pytest.approx(ref[step], rel=rel, abs=1e-7), step
    if backend == "fsdp2":
        assert "FSDP2 fully_shard per block" in text
    print(f"preempted at step {stopped_at}, resumed; final loss {got[STEPS]:.6f} "
          f"(uninterrupted {ref[STEPS]:.6f})")
