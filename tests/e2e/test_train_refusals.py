"""What lai-train refuses before any rank starts, and the file-system faults it meets later: one
line naming the file or field (and the errno), exit 2, nothing left that looks finished.

- model.init_from: no weights, truncated weights, a model that is not a causal LM (T5): under
  --dry-run, through the trainer (no config.yaml / data.json left) and through launch/train.sh,
  whose check refuses before deepspeed spawns a rank;
- --world 0; run.out_dir an existing file; a run directory another run holds, found by
  launch/train.sh's check before spawning (a damaged checkpoint's warning printed once through
  train.sh: test_train_faults.py);
- on a small tmpfs (mounted here, unmounted in teardown; skipped where mount is not permitted):
  a read-only run directory, a full disk during lai-prep, and a full disk while saving a
  checkpoint, which leaves the run resumable from the previous checkpoint and says so.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from support import ROOT
from support.faults import fault_args, held, one_error, tmpfs, train
from support.prep import make_docs
from support.train import launch_env

pytestmark = pytest.mark.slow
TRAIN_SH = ROOT / "launch" / "train.sh"


def _cli(capsys, *argv: str) -> str:
    """lai-train in this process, refused: its one error line."""
    from pipeline.train.cli import main
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert e.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TRAIN_SH), *args], cwd=ROOT,
                          env={**launch_env(), "LAI_CPU_RANKS": "2"}, capture_output=True,
                          text=True, timeout=300)


def _not_spawned(p: subprocess.CompletedProcess) -> None:
    """train.sh stopped at its check: deepspeed's runner never ran."""
    assert p.returncode == 2, (p.stdout + p.stderr)[-3000:]
    assert "runner.py" not in p.stdout + p.stderr and "Traceback" not in p.stderr, p.stderr


# ---------------------------------------------------------------- model.init_from

@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """save_pretrained folders: a tiny Llama (vocab 128, the data's) whole, without weights,
    with truncated weights; a T5 (not a causal LM)."""
    import transformers
    root = tmp_path_factory.mktemp("init")
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   max_position_embeddings=64)
    whole = root / "whole"
    transformers.LlamaForCausalLM(cfg).save_pretrained(whole)
    out = {"whole": whole}
    for name, damage in (("no_weights", lambda f: f.unlink()),
                         ("truncated", lambda f: f.write_bytes(f.read_bytes()[:5000]))):
        shutil.copytree(whole, root / name)
        damage(root / name / "model.safetensors")
        out[name] = root / name
    transformers.T5Config(vocab_size=128, d_model=32, d_ff=64, num_layers=1, num_heads=2
                          ).save_pretrained(root / "t5")
    out["t5"] = root / "t5"
    return out


INIT_REFUSALS = {
    "no_weights": "{p}: no weights (model.safetensors or pytorch_model.bin, or an index of shards)",
    "truncated": "{p}/model.safetensors: damaged or truncated (",
    "t5": "{p}: a T5Config ('t5') is not a causal language model",
}


@pytest.mark.parametrize("bad", sorted(INIT_REFUSALS))
def test_bad_init_from_is_one_line_before_any_rank(data, folders, tmp_path, capsys, bad):
    p = folders[bad]
    want = "error: model.init_from: " + INIT_REFUSALS[bad].format(p=p)
    run = tmp_path / "run"
    args = fault_args(data, run, f"model.init_from={p}")
    assert _cli(capsys, "--dry-run", *args).startswith(want)
    if bad == "truncated":           # the trainer's own check, and the launcher's, catch it
        assert one_error(train(data, run, f"model.init_from={p}", rc=2)).startswith(want)
        assert not (run / "config.yaml").exists() and not (run / "data.json").exists()
        p_sh = _launch(*args)
        _not_spawned(p_sh)
        assert one_error(p_sh).startswith(want)


def test_a_whole_init_from_folder_passes(data, folders, tmp_path, capsys):
    from pipeline.train.cli import main
    assert main(["--check", *fault_args(data, tmp_path / "run", f"model.init_from={folders['whole']}")
                 ]) == 0


# ---------------------------------------------------------------- small refusals

def test_world_zero_and_an_out_dir_that_is_a_file(data, tmp_path, capsys):
    args = fault_args(data, tmp_path / "run")
    assert _cli(capsys, "--dry-run", "--world", "0", *args) == \
        "error: --world: must be >= 1, got 0"
    f = tmp_path / "a_file"
    f.write_text("x")
    assert _cli(capsys, "--dry-run", *fault_args(data, f)) == \
        f"error: run.out_dir: {f} exists and is not a directory; choose another run.out_dir"


def test_train_sh_checks_the_lock_before_spawning(data, tmp_path):
    run = tmp_path / "run"
    with held(run) as pid:
        p = _launch(*fault_args(data, run))
        _not_spawned(p)
        assert one_error(p).startswith(f"error: run.out_dir: {run} is in use by another run "
                                       f"(pid {pid} on ")
        assert not (run / "config.yaml").exists()


# ---------------------------------------------------------------- file-system faults (tmpfs)

def test_read_only_run_dir(data, tmp_path):
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        error = one_error(train(data, ro / "run", rc=2))
    assert error.startswith(f"error: {ro / 'run'}: Read-only file system (errno EROFS); "), error


def test_disk_full_during_prep(tmp_path, capsys, spm_model):
    from data_prep.__main__ import main as prep
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in make_docs(300, seed=5) * 4))
    with tmpfs(tmp_path / "full", "96k") as full:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            prep(["--source", f"c=jsonl:{src}", "--tokenizer", f"spm:{spm_model}",
                  "--out", str(full / "o")])
        err = capsys.readouterr().err
        left = sorted(p.name for p in (full / "o").rglob("*")) if (full / "o").exists() else []
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert e.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: {full / 'o'}/") and \
        ": No space left on device (errno ENOSPC); " in lines[0], lines[0]
    assert "manifest.json" not in left and not [n for n in left if n.endswith((".bin", ".idx"))]


def test_disk_full_while_saving_a_checkpoint_leaves_the_run_resumable(data, tmp_path, capsys):
    """Room for one checkpoint (~1.4 MB) but not two: the step-4 save fails in one line that
    names the file, the errno and the checkpoint the run resumes from; nothing of step 4 is
    left; the copied run would resume from step 2."""
    from pipeline.train.checkpointing import checkpoint
    from pipeline.train.cli import main
    with tmpfs(tmp_path / "small", "2200k") as small:
        run = small / "run"
        p = train(data, run, rc=2)
        error = one_error(p)
        step2 = run / "checkpoints" / "step_00000002"
        assert "(errno ENOSPC" in error and f"error: {run / 'checkpoints'}" in error, error
        assert error.endswith(f"checkpoint step_00000004 was not saved and training stopped; the "
                              f"run resumes from {step2} when run again with the same command "
                              "(free space or fix the fault first)"), error
        assert checkpoint.complete(run) == [step2] and checkpoint.damage(step2) is None
        assert not (run / "checkpoints" / "step_00000004").exists()
        shutil.copytree(run, tmp_path / "copy")
    capsys.readouterr()
    assert main(["--dry-run", *fault_args(data, tmp_path / "copy")]) == 0
    copy2 = tmp_path / "copy" / "checkpoints" / "step_00000002"
    assert f"would resume from {copy2} at step 2" in capsys.readouterr().out
