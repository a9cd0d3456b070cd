import glob
import json
import math
import os
import sys

import pytest

from training.metrics import RunLog


def test_records_go_to_jsonl_and_tensorboard(tmp_path):
    log = RunLog(str(tmp_path), tensorboard=True)
    log.log({"kind": "train", "step": 0, "loss": 10.8, "mfu": None, "grad_norm": math.nan})
    log.log({"kind": "eval", "step": 10, "val_loss": 5.0})
    log.close()
    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [r["kind"] for r in lines] == ["train", "eval"] and lines[0]["loss"] == 10.8
    events = glob.glob(os.path.join(tmp_path, "tensorboard", "events.out.tfevents.*"))
    assert events and os.path.getsize(events[0]) > 0


def test_a_resumed_run_appends(tmp_path):
    for step in (0, 5):
        log = RunLog(str(tmp_path), tensorboard=False)
        log.log({"kind": "train", "step": step, "loss": 1.0})
        log.close()
    assert [json.loads(x)["step"] for x in open(tmp_path / "metrics.jsonl")] == [0, 5]


def test_scalars_are_the_finite_numbers_of_train_and_eval_records():
    from training.metrics import scalars

    assert scalars(
        {
            "kind": "eval",
            "step": 5,
            "time": 1.0,
            "val_loss": 2.5,
            "hellaswag_acc_norm_tokens": 0.3,
            "train_loss": None,
            "applied": True,
            "val_ppl": math.inf,
        }
    ) == {"eval/val_loss": 2.5, "eval/hellaswag_acc_norm_tokens": 0.3}
    assert scalars({"kind": "checkpoint", "step": 5, "elapsed_s": 1.0}) == {}


def test_wandb_project_without_wandb_is_a_one_line_error_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    with pytest.raises(
        ValueError, match=r"^wandb_project is set but wandb is not installed: pip install wandb"
    ):
        RunLog(str(tmp_path), tensorboard=False, wandb_project="gpt")


def test_wandb_offline_gets_tensorboard_s_scalars_and_a_resume_continues_its_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")  # no network, no account
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = RunLog(str(tmp_path), tensorboard=True, wandb_project="gpt", run_name="t", config={"max_steps": 9})
    log.log(
        {"kind": "eval", "step": 0, "val_loss": 10.8, "hellaswag_acc_norm_tokens": 0.25, "train_loss": None}
    )
    log.log({"kind": "train", "step": 0, "loss": 10.9, "mfu": None, "lr": 1e-4})
    log.log({"kind": "spike", "step": 1, "loss": 30.0})  # events are in metrics.jsonl only, as in TensorBoard
    log.log({"kind": "train", "step": 2, "loss": 9.5, "lr": 2e-4})
    assert log.wandb.config["max_steps"] == 9
    summary = {k: v for k, v in dict(log.wandb.summary).items() if not k.startswith("_")}
    run_id = log.wandb.id
    log.close()
    assert summary == {
        "eval/val_loss": 10.8,
        "eval/hellaswag_acc_norm_tokens": 0.25,
        "train/loss": 10.9,
        "train/lr": 1e-4,
    }
    tb = EventAccumulator(os.path.join(tmp_path, "tensorboard"))
    tb.Reload()
    assert set(tb.Tags()["scalars"]) == set(summary)  # the same names in both
    assert glob.glob(os.path.join(tmp_path, "wandb", f"offline-run-*-{run_id}"))
    resumed = RunLog(str(tmp_path), tensorboard=False, wandb_project="gpt", run_name="t")
    assert resumed.wandb.id == run_id  # the run folder keeps the id: a resume continues the W&B run
    resumed.close()
