import glob
import json
import os
import subprocess
import sys
import time

import pytest
import torch

import checkpoint as ckpt
import train
from conftest import write_dataset
from train_config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def records(run_dir, kind):
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [r for r in map(json.loads, fh) if r["kind"] == kind]


def final_weights(run_dir):
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir))["model"]


def run_dir_of(args):
    out = next(a.split("=", 1)[1] for a in args if a.startswith("--out_dir="))
    name = next(a.split("=", 1)[1] for a in reversed(args) if a.startswith("--run_name="))
    return os.path.join(out, name)


def test_a_run_logs_evaluates_saves_and_reports(tiny_args):
    train.main(tiny_args)
    run = run_dir_of(tiny_args)
    steps = [r["step"] for r in records(run, "train")]
    assert steps == list(range(6))  # the loss of each step's batch; the final row is the final eval's
    assert [r["step"] for r in records(run, "eval")] == [0, 3, 6]
    assert sorted(os.listdir(run)) == sorted(["best_model.pt", "checkpoint_step_3.pt", "checkpoint_step_6.pt",
                                              "config.json", "metrics.jsonl", "report.md"])
    losses = [r["loss"] for r in records(run, "train")]
    assert losses[-1] < losses[0]
    saved = ckpt.load_checkpoint(os.path.join(run, "checkpoint_step_6.pt"))
    assert saved["step"] == 6 and saved["tokenizer"]["tokenizer"] == "char"
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in saved["model"])
    assert "| Checkpoint | Step | Loss | Perplexity | Time Elapsed |" in open(os.path.join(run, "report.md")).read()


def test_accumulation_equivalence(tiny_args):
    """1 micro-batch of 4 and 4 micro-batches of 1 make the same optimizer steps."""
    a = tiny_args + ["--micro_batch_size=4", "--run_name=a"]
    b = tiny_args + ["--micro_batch_size=1", "--run_name=b"]
    train.main(a)
    train.main(b)
    la = [r["loss"] for r in records(run_dir_of(a), "train")]
    lb = [r["loss"] for r in records(run_dir_of(b), "train")]
    assert la == pytest.approx(lb, abs=1e-5)
    wa, wb = final_weights(run_dir_of(a)), final_weights(run_dir_of(b))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_exact_resume_with_dropout(tiny_args):
    """Stopping at step 3 and resuming gives bit-identical losses and weights (CPU, fp32)."""
    common = tiny_args + ["--dropout=0.1", "--lr_decay_steps=6"]
    whole = common + ["--run_name=whole"]
    train.main(whole)
    part = common + ["--run_name=part", "--max_steps=3"]
    train.main(part)
    train.main(common + ["--run_name=part", "--resume"])
    full = {r["step"]: r["loss"] for r in records(run_dir_of(whole), "train")}
    resumed = {r["step"]: r["loss"] for r in records(run_dir_of(part), "train")[3:]}
    assert resumed == {s: full[s] for s in range(3, 6)}  # the resumed launch trains batches 3, 4, 5
    wa, wb = final_weights(run_dir_of(whole)), final_weights(run_dir_of(part))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_init_from_fine_tunes_from_weights(tiny_args):
    train.main(tiny_args)
    src = ckpt.latest_checkpoint(run_dir_of(tiny_args))
    args = tiny_args + ["--run_name=ft", f"--init_from={src}", "--max_steps=1"]
    train.main(args)
    # the new run starts from the trained weights: its step-0 evaluation is the source's last
    assert records(run_dir_of(args), "eval")[0]["val_loss"] == records(run_dir_of(tiny_args), "eval")[-1]["val_loss"]
    assert records(run_dir_of(args), "train")[0]["step"] == 0  # but it is a new run, from step 0


def test_bf16_trains(tiny_args):
    args = tiny_args + ["--dtype=bfloat16", "--run_name=bf"]
    train.main(args)
    losses = [r["loss"] for r in records(run_dir_of(args), "train")]
    assert all(l == l for l in losses) and losses[-1] < losses[0]


def test_fp16_grad_scaler_skips_steps_on_inf(tiny_args, monkeypatch):
    """A huge initial loss scale overflows fp16 gradients: those steps are skipped and
    counted, the scale halves each time, and training then proceeds."""
    real = torch.amp.GradScaler
    monkeypatch.setattr(train.torch.amp, "GradScaler",
                        lambda device, enabled: real(device, init_scale=2.0 ** 40, enabled=enabled))
    args = tiny_args + ["--dtype=float16", "--run_name=fp16", "--n_embd=16", "--max_steps=4"]
    train.main(args)
    recs = records(run_dir_of(args), "train")
    assert recs[-1]["skipped_steps"] >= 1
    assert recs[-1]["loss_scale"] < 2.0 ** 40
    saved = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir_of(args)))
    assert saved["scaler"]["scale"] == recs[-1]["loss_scale"]


def test_early_stopping(tiny_args, monkeypatch):
    vals = iter([5.0, 4.0, 4.0, 3.0, 4.5, 3.5, 4.6, 3.6, 4.7, 3.7] + [9.0] * 20)
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: next(vals))  # (val, train) per eval
    args = tiny_args + ["--eval_interval=1", "--early_stopping_patience=2", "--run_name=es"]
    train.main(args)
    run = run_dir_of(args)
    end = records(run, "end")[-1]
    assert end["reason"] == "early_stopping" and end["step"] == 3
    assert ckpt.load_checkpoint(os.path.join(run, "best_model.pt"))["step"] == 1
    assert os.path.exists(os.path.join(run, "checkpoint_step_3.pt"))


def test_no_arguments_prints_usage_instead_of_training(capsys):
    train.main([])
    assert "usage: python train.py" in capsys.readouterr().out


def test_rerun_without_resume_refuses_to_overwrite(tiny_args):
    train.main(tiny_args)
    with pytest.raises(ConfigError, match="--resume"):
        train.main(tiny_args)


@pytest.mark.parametrize("extra,error,match", [
    (["--global_batch_size=5"], ConfigError, "not divisible"),
    (["--block_size=100000"], ValueError, "lower --block_size"),
    (["--data_dir=/nonexistent"], FileNotFoundError, "prepare_data.py"),
    (["--resume"], ConfigError, "no checkpoint"),
    (["--out_dir=/proc/forbidden"], ConfigError, "cannot write"),
    (["--device=mps"], ConfigError, "not supported"),
    (["--device=cuda"] if not torch.cuda.is_available() else ["--device=cuda:99"], ValueError, "cuda"),
])
def test_bad_input_errors(tiny_args, extra, error, match):
    with pytest.raises(error, match=match):
        train.main(tiny_args + extra)


def test_resume_into_a_different_shape_is_refused(tiny_args):
    train.main(tiny_args)
    with pytest.raises(ConfigError, match="n_embd 32 there vs 64 here"):
        train.main(tiny_args + ["--resume", "--n_embd=64", "--max_steps=8"])


def test_data_vocab_larger_than_the_checkpoint_model(tiny_args, tmp_path):
    train.main(tiny_args)
    big = write_dataset(str(tmp_path / "data" / "big"), list(range(300)) * 10, list(range(300)), 300)
    src = ckpt.latest_checkpoint(run_dir_of(tiny_args))
    with pytest.raises(ConfigError, match="vocab_size"):
        train.main(tiny_args + [f"--data_dir={big}", f"--init_from={src}", "--run_name=x"])


@pytest.mark.parametrize("config", sorted(glob.glob(os.path.join(ROOT, "config", "*.py"))))
def test_dry_run_for_every_config(config, capsys):
    start = time.time()
    train.main([config, "--dry_run"])
    out = capsys.readouterr().out
    assert "FLOPs" in out and "GiB" in out
    assert time.time() - start < 30


def test_ddp_matches_single_process_with_twice_the_accumulation(tiny_args):
    """torchrun with 2 gloo ranks x accumulation 2 equals 1 process x accumulation 4, loss by
    loss, eval by eval, with dropout on: batches and masks depend on the global index only."""
    common = tiny_args + ["--max_steps=4", "--global_batch_size=8", "--micro_batch_size=2", "--dropout=0.1"]
    single = common + ["--run_name=single"]
    train.main(single)
    ddp = common + ["--run_name=ddp"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train.py")] + ddp
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for kind, key in (("train", "loss"), ("eval", "val_loss"), ("eval", "train_loss")):
        la = [r[key] for r in records(run_dir_of(single), kind)]
        lb = [r[key] for r in records(run_dir_of(ddp), kind)]
        assert len(la) == len(lb) > 1 and la == pytest.approx(lb, abs=1e-5), (kind, key)
    start = records(run_dir_of(ddp), "start")[0]
    assert start["world_size"] == 2 and start["accumulation"] == 2
    wa, wb = final_weights(run_dir_of(single)), final_weights(run_dir_of(ddp))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_keep_last_prunes_old_step_checkpoints(tiny_args):
    args = tiny_args + ["--save_interval=1", "--keep_last=2"]
    train.main(args)
    assert [s for s, _ in ckpt.step_checkpoints(run_dir_of(args))] == [5, 6]
    assert os.path.exists(os.path.join(run_dir_of(args), "best_model.pt"))


def test_resume_auto_starts_fresh_then_continues(tiny_args):
    args = tiny_args + ["--resume=auto", "--max_steps=3"]
    train.main(args)  # nothing to resume: a fresh run
    train.main(tiny_args + ["--resume=auto"])  # continues from step 3 to 6
    steps = [r["step"] for r in records(run_dir_of(args), "start")]
    assert steps == [0, 3]
    assert ckpt.latest_checkpoint(run_dir_of(args)).endswith("checkpoint_step_6.pt")


def test_resume_in_another_precision(tiny_args):
    part = tiny_args + ["--max_steps=3"]
    train.main(part)
    train.main(tiny_args + ["--resume", "--dtype=float16", "--n_embd=32"])  # fp32 -> fp16: fresh scale
    assert records(run_dir_of(part), "end")[-1]["step"] == 6


def test_stale_temp_files_are_removed(tiny_args):
    run = run_dir_of(tiny_args)
    os.makedirs(run)
    stale = os.path.join(run, ".checkpoint_step_3.pt.tmp.12345")
    open(stale, "w").close()
    train.main(tiny_args)
    assert not os.path.exists(stale)
