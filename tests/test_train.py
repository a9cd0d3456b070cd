import glob
import hashlib
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import (
    QWEN25_3B,
    ROOT,
    TEXT,
    WITH_FAULTS,
    flip_a_bit,
    records,
    run_dir_of,
    tmpfs,
    tokenizer_folder,
    write_dataset,
)

import train
from model import count_params
from storage import checkpoint as ckpt
from storage.interop import hf_model_config
from storage.run_lock import RunFolderBusy
from text.loader import GPT2_META, load_meta
from text.tokenizer import load_tokenizer
from training.config import ConfigError, load_config
from training.resolve import Machine, resolve
from training.stopping import Stop


def final_weights(run_dir):
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir))["model"]


def test_a_run_logs_evaluates_saves_and_reports(tiny_args):
    train.main(tiny_args)
    run = run_dir_of(tiny_args)
    steps = [r["step"] for r in records(run, "train")]
    assert steps == list(range(6))  # the loss of each step's batch; the final row is the final eval's
    assert [r["step"] for r in records(run, "eval")] == [0, 3, 6]
    files = set(os.listdir(run))
    assert {"best_model.pt", "config.json", "metrics.jsonl", "report.md"} <= files
    assert [s for s, _ in ckpt.step_checkpoints(run)] == [3, 6]  # every save_interval, and the end
    assert not [f for f in files if f.startswith(".")]  # no temp file of a save left behind
    # the best, evaluated where a step checkpoint was saved, is that file under a second name
    best_step = ckpt.load_checkpoint(os.path.join(run, "best_model.pt"))["step"]
    assert os.path.samefile(os.path.join(run, "best_model.pt"), os.path.join(run, ckpt.step_file(best_step)))
    losses = [r["loss"] for r in records(run, "train")]
    assert losses[-1] < losses[0]
    saved = ckpt.load_checkpoint(os.path.join(run, "checkpoint_step_6.pt"))
    assert saved["step"] == 6 and saved["tokenizer"]["tokenizer"] == "char"
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in saved["model"])
    assert (
        "| Checkpoint | Step | Loss | Perplexity | Time Elapsed |"
        in open(os.path.join(run, "report.md")).read()
    )


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


# A Llama shape on the tiny run: rotary, RMSNorm, SwiGLU, one k/v head, an untied head.
LLAMA_ARGS = ["--model=llama-tiny", "--n_kv_head=1", "--mlp_hidden=64", "--tie_embeddings=False"]


@pytest.mark.parametrize("shape", [[], LLAMA_ARGS], ids=["gpt2", "llama"])
def test_exact_resume_with_dropout(tiny_args, shape):
    """Stopping at step 3 and resuming gives bit-identical losses and weights (CPU, fp32)."""
    common = tiny_args + shape + ["--dropout=0.1", "--lr_decay_steps=6"]
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
    assert ("lm_head.weight" in wa) == (shape == LLAMA_ARGS)  # the run trained the shape asked for


def test_init_from_fine_tunes_from_weights(tiny_args):
    train.main(tiny_args)
    src = ckpt.latest_checkpoint(run_dir_of(tiny_args))
    args = tiny_args + ["--run_name=ft", f"--init_from={src}", "--max_steps=1"]
    train.main(args)
    # the new run starts from the trained weights: its step-0 evaluation is the source's last
    assert (
        records(run_dir_of(args), "eval")[0]["val_loss"]
        == records(run_dir_of(tiny_args), "eval")[-1]["val_loss"]
    )
    assert records(run_dir_of(args), "train")[0]["step"] == 0  # but it is a new run, from step 0


def test_bf16_trains(tiny_args):
    args = tiny_args + ["--dtype=bfloat16", "--run_name=bf"]
    train.main(args)
    losses = [r["loss"] for r in records(run_dir_of(args), "train")]
    assert all(v == v for v in losses) and losses[-1] < losses[0]


def test_fp16_grad_scaler_skips_steps_on_inf(tiny_args, monkeypatch):
    """A huge initial loss scale overflows fp16 gradients: those steps are skipped and
    counted, the scale halves each time, and training then proceeds."""
    real = torch.amp.GradScaler
    monkeypatch.setattr(
        train.torch.amp,
        "GradScaler",
        lambda device, enabled: real(device, init_scale=2.0**40, enabled=enabled),
    )
    args = tiny_args + ["--dtype=float16", "--run_name=fp16", "--n_embd=16", "--max_steps=4"]
    train.main(args)
    recs = records(run_dir_of(args), "train")
    assert recs[-1]["skipped_steps"] >= 1
    assert recs[-1]["loss_scale"] < 2.0**40
    saved = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir_of(args)))
    assert saved["scaler"]["scale"] == recs[-1]["loss_scale"]


def test_early_stopping_ends_after_patience_evaluations_without_a_best_and_saves_there(
    tiny_args, monkeypatch
):
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


@pytest.mark.parametrize(
    "extra,error,match",
    [
        (["--global_batch_size=5"], ConfigError, "not divisible"),
        (["--block_size=100000"], ValueError, "lower --block_size"),
        (["--data_dir=/nonexistent"], FileNotFoundError, "prepare_data.py"),
        (["--resume"], ConfigError, "no checkpoint"),
        (["--out_dir=/proc/forbidden"], ConfigError, "cannot write"),
        (["--device=mps"], ConfigError, "not supported"),
        (["--device=cuda"] if not torch.cuda.is_available() else ["--device=cuda:99"], ValueError, "cuda"),
    ],
)
def test_bad_input_is_refused_before_training_naming_the_fix(tiny_args, extra, error, match):
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
def test_dry_run_for_every_config_plans_that_config(config, capsys, tmp_path, monkeypatch):
    """The plan printed is this config's: its model's size and the way its run resolves
    to on the plan's first card. A config that starts from a Hugging Face folder is planned
    from a stand-in holding only the published config.json (all a dry run reads)."""
    cfg = load_config([config])
    model_cfg = None
    if cfg.init_from:
        monkeypatch.chdir(tmp_path)
        os.makedirs(cfg.init_from)
        with open(os.path.join(cfg.init_from, "config.json"), "w") as fh:
            json.dump(QWEN25_3B, fh)
        model_cfg = train.init_shape(cfg, hf_model_config(cfg.init_from))
    train.main([config, "--dry_run"])
    out = capsys.readouterr().out
    meta = load_meta(cfg.data_dir) if os.path.isdir(cfg.data_dir) else GPT2_META
    r = resolve(
        cfg,
        Machine.planned(cfg.device, cfg.plan_gpus or 1, cfg.plan_gpu_memory_gib[0]),
        model_cfg or cfg.model_config(meta["vocab_size"]),
    )
    assert f"parameters:           {count_params(r.model_cfg):,} " in out
    assert f"This config runs {r.way.name} (" in out


def test_dry_run_of_a_llama_preset(capsys):
    """The plan of llama-3.2-1b on 8 GPUs of 80 GiB: its published size, its parts, and the
    way that fits (DDP: about 58 GiB at 4 x 4,096 tokens)."""
    train.main(
        [
            "--model=llama-3.2-1b",
            "--dry_run",
            "--plan_gpus=8",
            "--micro_batch_size=4",
            "--global_batch_size=256",
            "--plan_gpu_memory_gib=80",
        ]
    )
    out = capsys.readouterr().out
    assert "parameters:           1,235,814,400 (tied head counted once)" in out
    assert "128,256 (embedding padded to 128,256 rows)" in out
    assert "rotary (theta 500,000, llama3 scaling x32), RMSNorm (eps 1e-05), SwiGLU MLP, 8 k/v heads" in out
    assert "This config runs DDP (" in out


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


def test_resume_auto_with_init_from_starts_from_it_once(tiny_args):
    """A continued-pretraining config sets both: the source's weights on the first launch, the
    run's own newest checkpoint after (a preempted run does not restart from the source)."""
    train.main(tiny_args)
    src = ckpt.latest_checkpoint(run_dir_of(tiny_args))
    args = tiny_args + [f"--init_from={src}", "--resume=auto", "--run_name=cont"]
    train.main(args + ["--max_steps=3"])
    train.main(args)  # continues the run from step 3 to 6
    assert [r["step"] for r in records(run_dir_of(args), "start")] == [0, 3]
    assert ckpt.latest_checkpoint(run_dir_of(args)).endswith("checkpoint_step_6.pt")


def test_resume_auto_passes_over_a_corrupt_newest_checkpoint_and_says_so(tiny_args, capsys):
    """A flipped bit in the newest checkpoint: --resume=auto says so, sets it aside, resumes
    from the one before, and ends with the weights of a run that was never damaged."""
    train.main(tiny_args)
    run = run_dir_of(tiny_args)
    newest = os.path.join(run, "checkpoint_step_6.pt")
    whole = ckpt.load_checkpoint(newest)["model"]
    flip_a_bit(newest, whole["h.0.mlp.c_fc.weight"])
    capsys.readouterr()
    train.main(tiny_args + ["--resume=auto"])
    out = capsys.readouterr().out
    assert f"warning: passing over {newest}: tensor model/h.0.mlp.c_fc.weight does not match" in out
    assert (
        f"resuming from {os.path.join(run, 'checkpoint_step_3.pt')}, the newest intact checkpoint (step 3)"
        in out
    )
    assert os.path.exists(newest + ckpt.CORRUPT_SUFFIX)
    again = ckpt.load_checkpoint(newest)["model"]
    assert all(torch.equal(whole[k], again[k]) for k in whole)


def test_a_meta_whose_chars_disagree_with_its_vocab_is_refused_before_training(tiny_args, char_data):
    import json

    path = os.path.join(char_data, "meta.json")
    with open(path) as fh:
        meta = json.load(fh)
    with open(path, "w") as fh:
        json.dump({**meta, "chars": meta["chars"][:-1]}, fh)  # one character short of its vocab_size
    with pytest.raises(ValueError, match="disagree with its 32 chars"):
        train.main(tiny_args)
    assert not os.path.exists(run_dir_of(tiny_args))  # refused before anything was written


def test_init_from_hugging_face_weights_without_config_json_names_it(tiny_args, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(FileNotFoundError, match="holds Hugging Face weights but no config.json"):
        train.main(tiny_args + [f"--init_from={folder}"])


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
    from model import GPT, GPTConfig
    from parallel.distributed import Dist

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
        expected = (model(x[:2], x[:2]) + model(x[2:], x[2:])) / 2
    before = [p.detach().clone() for p in model.parameters()]
    values = train.train_step(model, [opt], scaler, batches, 1.0, torch.autocast("cpu", enabled=False), env)
    assert values.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert values.grad_norm.item() > 0 and values.applied.item() == 1.0
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())  # zeroed for the next step


class NaNLoss(torch.nn.Module):
    """A model whose loss is NaN, as a diverged run's would be."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, y):
        return self.inner(x, y) * float("nan")


def test_train_step_skips_a_non_finite_update_without_touching_weights_or_optimizer():
    model, opt, scaler, x, env = _tiny_step_setup()
    train.train_step(model, [opt], scaler, [(x, x, 1)], 1.0, torch.autocast("cpu", enabled=False), env)
    state_before = {k: v.clone() for k, v in opt.state[next(model.parameters())].items()}
    weights_before = [p.detach().clone() for p in model.parameters()]
    values = train.train_step(
        NaNLoss(model), [opt], scaler, [(x, x, 2)], 1.0, torch.autocast("cpu", enabled=False), env
    )
    assert math.isnan(values.loss.item()) and values.applied.item() == 0.0
    assert all(torch.equal(a, b) for a, b in zip(weights_before, model.parameters()))
    state_after = opt.state[next(model.parameters())]
    assert all(torch.equal(state_before[k], state_after[k]) for k in state_before)  # step count too


def test_train_step_skips_a_non_finite_update_in_both_of_muons_optimizers():
    from training.config import TrainConfig
    from training.optimizers import build_optimizers

    model, _, scaler, x, env = _tiny_step_setup()
    opts = build_optimizers(model, TrainConfig(optimizer="muon", learning_rate=1e-2))
    off = torch.autocast("cpu", enabled=False)
    train.train_step(model, opts, scaler, [(x, x, 1)], 1.0, off, env)
    states = [{id(p): {k: v.clone() for k, v in o.state[p].items()} for p in o.state} for o in opts]
    assert all(states) and "momentum_buffer" in next(iter(states[1].values()))
    weights_before = [p.detach().clone() for p in model.parameters()]
    values = train.train_step(NaNLoss(model), opts, scaler, [(x, x, 2)], 1.0, off, env)
    assert values.applied.item() == 0.0
    assert all(torch.equal(a, b) for a, b in zip(weights_before, model.parameters()))
    for before, o in zip(states, opts):
        assert all(torch.equal(before[id(p)][k], v) for p in o.state for k, v in o.state[p].items())
    train.train_step(model, opts, scaler, [(x, x, 3)], 1.0, off, env)  # a finite step applies again
    assert not all(torch.equal(a, b) for a, b in zip(weights_before, model.parameters()))


# ---- Muon and the wsd schedule in whole runs ------------------------------------------------


def test_muon_resumes_exactly_with_both_optimizers_state_in_the_checkpoint(tiny_args, capsys):
    common = tiny_args + ["--optimizer=muon", "--dropout=0.1", "--lr_decay_steps=6"]
    whole = common + ["--run_name=whole"]
    train.main(whole)
    assert "optimizer Muon on the blocks' matrices: lr 0.02" in capsys.readouterr().out
    part = common + ["--run_name=part", "--max_steps=3"]
    train.main(part)
    train.main(common + ["--run_name=part", "--resume"])
    full = {r["step"]: r["loss"] for r in records(run_dir_of(whole), "train")}
    resumed = {r["step"]: r["loss"] for r in records(run_dir_of(part), "train")[3:]}
    assert resumed == {s: full[s] for s in range(3, 6)}
    wa, wb = final_weights(run_dir_of(whole)), final_weights(run_dir_of(part))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir_of(part)))["optimizer"]["state"]
    assert set(state["h.0.attn.c_attn.weight"]) == {"momentum_buffer"}  # Muon's
    assert {"exp_avg", "exp_avg_sq"} <= set(state["wte.weight"])  # AdamW's
    start = records(run_dir_of(whole), "start")[0]
    assert start["config"]["optimizer"] == "muon" and start["optimizer_params"]["Muon"] == 2 * 12 * 32 * 32
    report = open(os.path.join(run_dir_of(whole), "report.md")).read()
    assert "Muon" in report and "cosine" in report


def test_another_optimizer_cannot_resume_but_starts_from_the_weights_with_fresh_state(tiny_args):
    train.main(tiny_args)
    with pytest.raises(ConfigError, match="trained with --optimizer=adamw.*--init_from="):
        train.main(tiny_args + ["--optimizer=muon", "--max_steps=8", "--resume"])
    src = ckpt.latest_checkpoint(run_dir_of(tiny_args))
    args = tiny_args + ["--run_name=ft", f"--init_from={src}", "--optimizer=muon", "--max_steps=2"]
    train.main(args)
    assert (
        records(run_dir_of(args), "eval")[0]["val_loss"]
        == records(run_dir_of(tiny_args), "eval")[-1]["val_loss"]
    )
    # fresh state: after 2 steps AdamW's step count is 2, not the source's 6 + 2
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir_of(args)))["optimizer"]["state"]
    assert float(state["wte.weight"]["step"]) == 2.0


def test_muon_in_fp16_skips_overflowing_steps_through_the_scaler(tiny_args, monkeypatch):
    real = torch.amp.GradScaler
    monkeypatch.setattr(
        train.torch.amp,
        "GradScaler",
        lambda device, enabled: real(device, init_scale=2.0**40, enabled=enabled),
    )
    args = tiny_args + [
        "--dtype=float16",
        "--run_name=fp16",
        "--n_embd=16",
        "--max_steps=4",
        "--optimizer=muon",
    ]
    train.main(args)
    recs = records(run_dir_of(args), "train")
    assert recs[-1]["skipped_steps"] >= 1 and recs[-1]["loss_scale"] < 2.0**40
    assert all(math.isfinite(w.float().abs().max()) for w in final_weights(run_dir_of(args)).values())


def test_a_wsd_run_resumed_from_its_constant_stage_with_more_steps_ends_as_one_planned_that_long(tiny_args):
    common = tiny_args + [
        "--lr_schedule=wsd",
        "--decay_fraction=0.25",
        "--optimizer=muon",
        "--eval_interval=100",
    ]
    short = common + ["--run_name=short", "--max_steps=8", "--save_steps=4"]  # decays over steps 6-7
    train.main(short)
    planned = common + ["--run_name=planned", "--max_steps=16"]
    train.main(planned)
    extended = common + ["--run_name=extended", "--max_steps=16"]
    train.main(extended + [f"--resume={os.path.join(run_dir_of(short), ckpt.step_file(4))}"])
    a, b = (records(run_dir_of(x), "eval")[-1] for x in (planned, extended))
    assert (a["step"], a["val_loss"]) == (b["step"], b["val_loss"]) == (16, a["val_loss"])
    assert records(run_dir_of(short), "eval")[-1]["val_loss"] != a["val_loss"]


# ---- when a step goes wrong ---------------------------------------------------------------


def test_a_diverging_run_stops_after_n_non_finite_steps_keeping_the_last_good_checkpoint(tiny_args):
    args = tiny_args + [
        "--learning_rate=1e6",
        "--warmup_steps=0",
        "--max_steps=40",
        "--save_interval=1",
        "--eval_interval=2",
        "--max_nonfinite_steps=3",
        "--run_name=nan",
    ]
    assert train.main(args) == Stop.NONFINITE.exit_code == 1
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


def test_a_run_whose_loss_stays_far_above_its_level_stops_as_diverged_and_its_advice_works(tiny_args, capsys):
    """lr 30 keeps every loss finite but wrecks the weights: the run stops as diverged (exit
    1), keeps no best worse than the untrained model, saves nothing from the diverged
    state, and the checkpoint its message names resumes with a lower learning rate."""
    args = tiny_args + ["--save_interval=2", "--eval_interval=2", "--divergence_steps=3", "--run_name=div"]
    train.main(args + ["--max_steps=4"])  # healthy up to step 4
    capsys.readouterr()
    assert (
        train.main(args + ["--max_steps=20", "--learning_rate=30", "--resume"])
        == Stop.DIVERGED.exit_code
        == 1
    )
    run = run_dir_of(args)
    assert records(run, "end")[-1]["reason"] == "diverged"
    diverging = records(run, "diverging")
    assert [e["in_a_row"] for e in diverging] == [1, 2, 3] and diverging[0]["step"] == 5
    assert all(math.isfinite(r["loss"]) for r in records(run, "train"))  # no step was non-finite
    assert [s for s, _ in ckpt.step_checkpoints(run)] == [2, 4]  # nothing saved from the diverged state
    best = ckpt.load_checkpoint(os.path.join(run, "best_model.pt"))
    assert best["step"] <= 4 and best["best_val_loss"] <= records(run, "eval")[0]["val_loss"]
    message = capsys.readouterr().out
    resume = f"--resume={os.path.join(run, ckpt.step_file(4))}"
    assert "had a loss over 3 x the mean of the steps before them: the run diverged" in message
    assert resume in message
    assert train.main(args + ["--max_steps=8", "--learning_rate=3e-3", resume]) == 0  # the advice, followed
    assert records(run, "end")[-1]["reason"] == "max_steps"


def test_a_wrecked_model_is_never_kept_as_best_and_the_advice_names_a_new_run(tiny_args, capsys):
    """Diverged from step 1 on: every evaluation is worse than the untrained baseline, so
    there is no best_model.pt, and with no checkpoint from before the streak the advice is a
    new run, which works."""
    args = tiny_args + [
        "--learning_rate=30",
        "--warmup_steps=0",
        "--max_steps=20",
        "--save_interval=1",
        "--eval_interval=1",
        "--divergence_steps=3",
        "--run_name=wrecked",
    ]
    assert train.main(args) == 1
    run = run_dir_of(args)
    evals = records(run, "eval")
    assert len(evals) >= 3 and all(e["val_loss"] > evals[0]["val_loss"] for e in evals[1:])
    assert not os.path.exists(os.path.join(run, "best_model.pt"))
    assert "start again under a new --run_name" in capsys.readouterr().out
    assert train.main(args[:-1] + ["--learning_rate=3e-3", "--run_name=wrecked2", "--max_steps=3"]) == 0


def test_resuming_at_or_past_max_steps(tiny_args, capsys):
    train.main(tiny_args)
    assert train.main(tiny_args + ["--resume"]) == 0  # at max_steps: nothing to train, says so
    assert "nothing to train" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"at step 6, past max_steps=4; raise --max_steps"):
        train.main(tiny_args + ["--resume", "--max_steps=4"])


def test_init_from_takes_the_shape_of_its_source(tiny_args):
    train.main(tiny_args)
    src = ckpt.latest_checkpoint(run_dir_of(tiny_args))
    ft = tiny_args + [
        "--run_name=ft2",
        f"--init_from={src}",
        "--max_steps=1",
        "--model=gpt2-124m",
        "--n_layer=None",
        "--n_head=None",
        "--n_embd=None",
        "--block_size=None",
    ]
    train.main(ft)  # the preset says 124M; the source says 2 x 32, and wins
    assert (
        records(run_dir_of(ft), "start")[0]["params"] == records(run_dir_of(tiny_args), "start")[0]["params"]
    )
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
        records(run_dir_of(tiny_args), "eval")[-1]["val_loss"], rel=1e-6
    )


# ---- one writer per run folder, and a full disk --------------------------------------------


def test_a_second_run_in_a_busy_folder_is_refused_and_a_killed_holder_never_blocks_a_resume(tiny_args):
    args = tiny_args + ["--max_steps=8", "--save_interval=2", "--eval_interval=100", "--run_name=locked"]
    run = run_dir_of(args)
    holder = subprocess.Popen(  # saves step 2, then hangs before step 3 until killed
        [sys.executable, WITH_FAULTS, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, FAULT="hang:0:3", OMP_NUM_THREADS="1"),
    )
    try:
        out = []
        while not (out and "hanging at step 3" in out[-1]):
            out.append(holder.stdout.readline())
            assert out[-1], "the first run ended before it hung:\n" + "".join(out)[-3000:]
        assert [s for s, _ in ckpt.step_checkpoints(run)] == [2]
        with pytest.raises(
            RunFolderBusy,
            match=rf"{run} is in use by another run \(host .+, pid {holder.pid}, "
            r"started .+\); .* pick another --run_name",
        ):
            train.main(args + ["--resume=auto"])
    finally:
        holder.kill()  # kill -9: no chance to release anything
        holder.wait()
    assert train.main(args + ["--resume=auto"]) == 0  # the kernel dropped the dead holder's lock
    assert records(run, "end")[-1]["step"] == 8


def test_the_disk_full_advice_works_when_followed(tiny_args, tmp_path, capsys):
    """A folder with room for about four checkpoints: keeping every one fails on the fifth,
    and the --keep_last the message names, the one the start-up warning named, carries the run
    to its end (rotation deletes old step checkpoints before each save, and best_model.pt
    links the step checkpoint)."""
    with tmpfs(tmp_path / "small", "size=1600k") as out:
        args = tiny_args + [
            f"--out_dir={out}",
            "--save_interval=1",
            "--eval_interval=1",
            "--max_steps=12",
            "--run_name=full",
        ]
        with pytest.raises(ckpt.CheckpointWriteError, match="the disk is full") as failed:
            train.main(args)
        keep = re.search(r"set --keep_last=(\d+)", str(failed.value))
        assert keep, str(failed.value)
        warned = re.search(r"warning: .* has room for .*set --keep_last=(\d+)", capsys.readouterr().out)
        assert warned and warned.group(1) == keep.group(1)  # the start and the failure agree
        assert train.main(args + [f"--keep_last={keep.group(1)}", "--resume"]) == 0
        run = os.path.join(out, "full")
        assert records(run, "end")[-1]["reason"] == "max_steps"
        assert [s for s, _ in ckpt.step_checkpoints(run)][-1] == 12
        assert len(ckpt.step_checkpoints(run)) == int(keep.group(1))


# ---- what an evaluation measures: a mixture of datasets, and multiple-choice tasks -----------


def two_char_datasets(tmp_path):
    """Two prepared datasets with one tokenizer: the fixture text, and its lines reversed."""
    chars = "".join(sorted(set(TEXT)))
    ids = [chars.index(c) for c in TEXT]
    other = [chars.index(c) for c in "\n".join(reversed(TEXT.split("\n")))]
    a = write_dataset(str(tmp_path / "data" / "a"), ids[:3000], ids[3000:], len(chars) + 1)
    b = write_dataset(str(tmp_path / "data" / "b"), other[:3000], other[3000:], len(chars) + 1)
    return a, b


def test_a_mixture_reports_each_datasets_val_loss_and_follows_their_weighted_mean(tiny_args, tmp_path):
    a, b = two_char_datasets(tmp_path)
    args = tiny_args + [f"--data_mix={a}:0.7,{b}:0.3", "--run_name=mix"]
    assert train.main(args) == 0
    run = run_dir_of(args)
    for e in records(run, "eval"):
        assert e["val_loss"] == pytest.approx(0.7 * e["val_loss_a"] + 0.3 * e["val_loss_b"], rel=1e-6)
    drawn = json.load(open(os.path.join(run, "config.json")))["derived"]["datasets"]
    total = 6 * 4 * 16  # max_steps x global batch x block_size
    assert [(d["data_dir"], d["weight"], d["tokens"]) for d in drawn] == [
        (a, 0.7, 0.7 * total),
        (b, 0.3, 0.3 * total),
    ]
    assert drawn[0]["epochs"] == pytest.approx(0.7 * total / 3000)
    best = ckpt.load_checkpoint(os.path.join(run, "best_model.pt"))
    assert best["best_val_loss"] == min(e["val_loss"] for e in records(run, "eval")[1:])
    report = open(os.path.join(run, "report.md")).read()
    assert f"- Data: `{a}`, weight 0.70: {0.7 * total:,.0f} tokens" in report and "| Val Loss b |" in report
    with pytest.raises(ConfigError, match="was trained on data_mix=.* a resume must draw the same batches"):
        train.main(tiny_args + [f"--data_mix={a}:0.5,{b}:0.5", "--run_name=mix", "--resume", "--max_steps=8"])


def test_one_dataset_as_a_mixture_trains_exactly_as_data_dir(tiny_args, tmp_path, char_data):
    train.main(tiny_args + ["--run_name=plain"])
    train.main(tiny_args + [f"--data_mix={char_data}:1", "--run_name=mixed"])
    plain, mixed = (
        records(os.path.join(os.path.dirname(run_dir_of(tiny_args)), name), "train")
        for name in ("plain", "mixed")
    )
    assert [r["loss"] for r in plain] == [r["loss"] for r in mixed]


def test_eval_tasks_are_scored_at_every_evaluation_and_can_drive_early_stopping(tiny_args, tmp_path):
    task = tmp_path / "task.jsonl"
    with open(task, "w") as fh:
        for i in range(6):
            fh.write(
                json.dumps(
                    {
                        "context": "First Citizen:\n",
                        "choices": ["Speak, speak.", "All:\nfamish"],
                        "label": i % 2,
                    }
                )
                + "\n"
            )
    args = tiny_args + [
        f"--eval_tasks=toy:{task}",
        "--early_stopping_metric=toy_acc_norm_tokens",
        "--early_stopping_patience=1",
        "--max_steps=30",
        "--run_name=tasks",
    ]
    assert train.main(args) == 0
    run = run_dir_of(args)
    evals = records(run, "eval")
    assert all(0 <= e[f"toy_{m}"] <= 1 for e in evals for m in ("acc", "acc_norm_tokens", "acc_norm_chars"))
    assert all(
        e["toy_acc_stderr"] == pytest.approx((e["toy_acc"] * (1 - e["toy_acc"]) / 5) ** 0.5) for e in evals
    )
    assert all(e["toy_acc"] * 6 == round(e["toy_acc"] * 6) for e in evals)  # counts over the 6 examples
    # the two labels alternate, so one choice always wins half: accuracy never beats its value
    # at step 0, and patience 1 stops the run at the first evaluation after it
    assert records(run, "end")[-1]["reason"] == "early_stopping" and [e["step"] for e in evals] == [0, 3]


# ---- a model folder's tokenizer ---------------------------------------------------------------


def test_a_run_keeps_its_datas_tokenizer_and_refuses_data_of_another(tiny_args, tmp_path):
    import prepare_data

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in TEXT.split("\n\n") if d))
    data, models = {}, {}
    for name, style in (("llama", "llama3"), ("llama_again", "llama3"), ("qwen", "qwen2.5")):
        models[name] = tokenizer_folder(tmp_path / "models" / style, style)
        data[name] = str(tmp_path / "data" / name)
        seed = 1 if name == "llama_again" else 1337  # another split: other data, the same tokenizer
        prepare_data.prepare(
            [str(corpus)], str(tmp_path / "data"), name, models[name], seed=seed, progress=False
        )
    args = tiny_args + [
        f"--data_dir={data['llama']}",
        "--run_name=llama",
        "--max_steps=2",
        "--eval_interval=2",
    ]
    train.main(args)
    src = ckpt.latest_checkpoint(run_dir_of(args))
    saved = load_tokenizer(ckpt.load_checkpoint(src)["tokenizer"])  # self-contained: the files are in it
    assert (
        saved.sha256
        == hashlib.sha256(open(os.path.join(models["llama"], "tokenizer.json"), "rb").read()).hexdigest()
    )
    assert saved.doc_prefix == (saved.backend.token_to_id("<|begin_of_text|>"),)
    ft = tiny_args + [
        f"--data_dir={data['llama_again']}",
        f"--init_from={src}",
        "--run_name=ft",
        "--max_steps=1",
    ]
    train.main(ft)  # the same tokenizer on other data is fine
    with pytest.raises(ConfigError) as refused:
        train.main(tiny_args + [f"--data_dir={data['qwen']}", f"--init_from={src}", "--run_name=no"])
    message = str(refused.value)
    assert "\n" not in message
    assert (
        f"tokenizer.json of {models['llama']}" in message and f"tokenizer.json of {models['qwen']}" in message
    )
    assert message.endswith(f"python prepare_data.py --tokenizer={models['llama']} ...")


def test_a_disk_too_small_for_one_checkpoint_says_to_pick_another_out_dir_which_works(
    tiny_args, tmp_path, capsys
):
    with tmpfs(tmp_path / "tiny_disk", "size=256k") as out:
        args = tiny_args + [f"--out_dir={out}", "--run_name=cramped"]
        with pytest.raises(ckpt.CheckpointWriteError, match="the disk is full") as failed:
            train.main(args)
        assert "cannot hold one checkpoint" in capsys.readouterr().out  # warned at the start
    assert re.search(
        r"that disk \(0.3 MB in all\) cannot hold one checkpoint, best_model.pt and one being written "
        r"\([\d.]+ MB\): pick another --out_dir with at least [\d.]+ MB free and run the same command there$",
        str(failed.value),
    ), str(failed.value)
    assert train.main(args + [f"--out_dir={tmp_path / 'roomy'}"]) == 0  # the advice, followed


def test_a_resume_into_a_read_only_folder_says_to_make_it_writable_which_works(tiny_args, tmp_path):
    with tmpfs(tmp_path / "disk", "size=8m") as out:
        args = tiny_args + [f"--out_dir={out}", "--run_name=ro"]
        train.main(args + ["--max_steps=3"])
        subprocess.run(["mount", "-o", "remount,ro", out], check=True)
        try:
            with pytest.raises(
                ConfigError, match=r"which holds the checkpoints to resume: make it writable again"
            ):
                train.main(args + ["--resume"])
        finally:
            subprocess.run(["mount", "-o", "remount,rw", out], check=True)
        assert train.main(args + ["--resume"]) == 0  # the advice, followed
        assert records(os.path.join(out, "ro"), "end")[-1]["step"] == 6


def test_a_run_whose_metrics_file_is_deleted_finishes_with_a_report_that_says_so(
    tiny_args, monkeypatch, capsys
):
    run = run_dir_of(tiny_args)
    real = train.micro_batches

    def deleting(r, step):
        if step == 3:
            os.remove(os.path.join(run, "metrics.jsonl"))
        return real(r, step)

    monkeypatch.setattr(train, "micro_batches", deleting)
    assert train.main(tiny_args) == 0
    assert [s for s, _ in ckpt.step_checkpoints(run)] == [3, 6]
    lost = records(run, "lost_records")
    assert len(lost) == 1 and all(r["step"] >= lost[0]["step"] for r in records(run, "train"))
    assert records(run, "end")[-1]["reason"] == "max_steps"
    assert f"report: {os.path.join(run, 'report.md')}" in capsys.readouterr().out
    assert "metrics.jsonl was deleted while the run trained" in open(os.path.join(run, "report.md")).read()


def test_a_run_that_never_beats_its_start_says_why_and_sample_says_which_checkpoint_it_uses(
    tiny_args, capsys
):
    """Divergence with the stop turned off: no best, and the message says why; sample.py then
    names the step checkpoint it uses, and that its val loss is worse than the start's."""
    import sample

    args = tiny_args + ["--learning_rate=30", "--warmup_steps=0", "--divergence_factor=0", "--run_name=wild"]
    assert train.main(args) == 0
    run = run_dir_of(args)
    baseline = records(run, "eval")[0]["val_loss"]
    assert not os.path.exists(os.path.join(run, ckpt.BEST_FILE))
    assert (
        f"done: max_steps at step 6; no best val loss: no evaluation beat the starting point's val loss "
        f"{baseline:.4f}, so there is no best_model.pt" in capsys.readouterr().out
    )
    sample.main([f"--checkpoint={run}", "--num_samples=1", "--max_new_tokens=2", "--device=cpu"])
    assert (
        f"note: using {os.path.join(run, 'checkpoint_step_6.pt')} (step 6), the newest intact step checkpoint: "
        f"best_model.pt is missing: no evaluation beat the starting point's val loss {baseline:.4f}. This "
        f"one's val loss is" in capsys.readouterr().err
    )


def test_extending_a_wsd_run_from_a_decaying_checkpoint_warns_where_to_resume_from():
    from training.config import TrainConfig

    longer = TrainConfig(lr_schedule="wsd", max_steps=200, lr_decay_steps=200, warmup_steps=10)
    saved = {
        "config": dict(
            lr_schedule="wsd", max_steps=100, lr_decay_steps=100, warmup_steps=10, decay_fraction=0.2
        )
    }
    assert train.extension_warning(longer, saved, 80) is None  # steps 0-79: all constant
    assert "resume a checkpoint from step 80 or before" in train.extension_warning(longer, saved, 90)
    same = TrainConfig(lr_schedule="wsd", max_steps=100, lr_decay_steps=100, warmup_steps=10)
    assert train.extension_warning(same, saved, 90) is None  # a plain resume of the same plan
