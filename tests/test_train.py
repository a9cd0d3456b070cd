import glob
import os
import time

import pytest
import torch

import checkpoint as ckpt
import train
from conftest import records, run_dir_of, write_dataset
from train_config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def final_weights(run_dir):
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir))["model"]


def test_a_run_logs_evaluates_saves_and_reports(tiny_args):
    train.main(tiny_args)
    run = run_dir_of(tiny_args)
    steps = [r["step"] for r in records(run, "train")]
    assert steps == list(range(6))  # the loss of each step's batch; the final row is the final eval's
    assert [r["step"] for r in records(run, "eval")] == [0, 3, 6]
    assert sorted(os.listdir(run)) == sorted(["best_model.pt", "checkpoint_step_3.pt", "checkpoint_step_6.pt",
                                              "config.json", "metrics.jsonl", "report.md", "report.png"])
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


# ---- train_step on its own ----------------------------------------------------------------

def _tiny_step_setup(seed=0):
    from distributed import Dist
    from model import GPT, GPTConfig
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=16))
    opt = torch.optim.AdamW(model.optimizer_groups(0.1), lr=1e-2, fused=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x = torch.randint(0, 40, (4, 8))
    return model, opt, scaler, x, Dist()


def test_train_step_applies_one_update_and_reports_loss_and_norm():
    model, opt, scaler, x, env = _tiny_step_setup()
    batches = [(x[:2], x[:2], 1), (x[2:], x[2:], 2)]
    with torch.no_grad():
        expected = (model(x[:2], x[:2])[1] + model(x[2:], x[2:])[1]) / 2
    before = [p.detach().clone() for p in model.parameters()]
    loss, grad_norm, applied = train.train_step(model, opt, scaler, batches, 1.0, torch.autocast("cpu", enabled=False),
                                                env).tolist()
    assert loss == pytest.approx(expected.item(), rel=1e-6) and grad_norm > 0 and applied == 1.0
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())  # zeroed for the next step


class NaNLoss(torch.nn.Module):
    """A model whose loss is NaN, as a diverged run's would be."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, y):
        logits, loss = self.inner(x, y)
        return logits, loss * float("nan")


def test_train_step_skips_a_non_finite_update_without_touching_weights_or_optimizer():
    model, opt, scaler, x, env = _tiny_step_setup()
    train.train_step(model, opt, scaler, [(x, x, 1)], 1.0, torch.autocast("cpu", enabled=False), env)
    state_before = {k: v.clone() for k, v in opt.state[next(model.parameters())].items()}
    weights_before = [p.detach().clone() for p in model.parameters()]
    loss, grad_norm, applied = train.train_step(NaNLoss(model), opt, scaler, [(x, x, 2)], 1.0,
                                                torch.autocast("cpu", enabled=False), env).tolist()
    assert loss != loss and applied == 0.0
    assert all(torch.equal(a, b) for a, b in zip(weights_before, model.parameters()))
    state_after = opt.state[next(model.parameters())]
    assert all(torch.equal(state_before[k], state_after[k]) for k in state_before)  # step count too


# ---- when a step goes wrong ---------------------------------------------------------------

def test_a_diverging_run_stops_after_n_non_finite_steps_keeping_the_last_good_checkpoint(tiny_args):
    args = tiny_args + ["--learning_rate=1e6", "--warmup_steps=0", "--max_steps=40", "--save_interval=1",
                        "--eval_interval=2", "--max_nonfinite_steps=3", "--run_name=nan"]
    assert train.main(args) == train.EXIT_CODES["nonfinite"] == 1
    run = run_dir_of(args)
    end = records(run, "end")[-1]
    bad = records(run, "nonfinite")
    assert end["reason"] == "nonfinite" and [e["in_a_row"] for e in bad[-3:]] == [1, 2, 3]
    assert end["step"] < 40
    # no checkpoint was saved after the first non-finite step: the newest is the last good state
    assert [s for s, _ in ckpt.step_checkpoints(run)] == list(range(1, bad[-3]["step"] + 1))
    assert any(e["val_loss"] != e["val_loss"] for e in records(run, "eval"))  # NaN evaluations ran,
    assert not os.path.exists(os.path.join(run, "best_model.pt"))  # but a NaN val loss is never best
    assert records(run, "train")[-1]["skipped_steps"] >= 1
    assert "Non-finite steps (3)" in open(os.path.join(run, "report.md")).read()


def test_resuming_at_or_past_max_steps(tiny_args, capsys):
    train.main(tiny_args)
    assert train.main(tiny_args + ["--resume"]) == 0  # at max_steps: nothing to train, says so
    assert "nothing to train" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"at step 6, past max_steps=4; raise --max_steps"):
        train.main(tiny_args + ["--resume", "--max_steps=4"])


def test_init_from_takes_the_shape_of_its_source(tiny_args):
    train.main(tiny_args)
    src = ckpt.latest_checkpoint(run_dir_of(tiny_args))
    ft = tiny_args + ["--run_name=ft2", f"--init_from={src}", "--max_steps=1", "--model=gpt2-124m",
                      "--n_layer=None", "--n_head=None", "--n_embd=None", "--block_size=None"]
    train.main(ft)  # the preset says 124M; the source says 2 x 32, and wins
    assert records(run_dir_of(ft), "start")[0]["params"] == records(run_dir_of(tiny_args), "start")[0]["params"]
    with pytest.raises(ConfigError, match="config changes it: n_embd 32 there vs 64 here"):
        train.main(tiny_args + ["--run_name=ft3", f"--init_from={src}", "--n_embd=64"])


def test_tensorboard_shows_each_step_once_after_a_resume(tiny_args):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    args = [a for a in tiny_args if not a.startswith("--tensorboard")] + ["--tensorboard=True"]
    train.main(args + ["--max_steps=3", "--lr_decay_steps=6"])
    train.main(args + ["--resume", "--lr_decay_steps=6"])
    acc = EventAccumulator(os.path.join(run_dir_of(args), "tensorboard"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == sorted(set(steps)) == list(range(6))
    assert [e.step for e in acc.Scalars("eval/val_loss")] == [0, 3, 6]


def test_init_from_a_hugging_face_export_of_a_run(tiny_args, tmp_path):
    """A run exported to Hugging Face's GPT-2 format comes back through --init_from with the
    same weights: the new run's first evaluation equals the source's last."""
    import export
    train.main(tiny_args)
    folder = str(tmp_path / "hf")
    export.main([f"--checkpoint={run_dir_of(tiny_args)}", f"--out={folder}"])
    ft = tiny_args + ["--run_name=from_hf", f"--init_from={folder}", "--max_steps=1"]
    train.main(ft)
    assert records(run_dir_of(ft), "eval")[0]["val_loss"] == pytest.approx(
        records(run_dir_of(tiny_args), "eval")[-1]["val_loss"], rel=1e-6)
