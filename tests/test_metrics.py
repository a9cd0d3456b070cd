import glob
import json
import math
import os

from metrics import RunLog


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
