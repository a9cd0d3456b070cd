import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint as ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_clean_state_dict_strips_only_leading_wrapper_prefixes():
    state = {"module._orig_mod.h.0.attn.c_attn.weight": 1, "_orig_mod.wte.weight": 2,
             "h.0.submodule.w": 3}
    assert ckpt.clean_state_dict(state) == {"h.0.attn.c_attn.weight": 1, "wte.weight": 2, "h.0.submodule.w": 3}


def test_save_and_load_round_trip_with_weights_only(tmp_path):
    path = str(tmp_path / "checkpoint_step_5.pt")
    ckpt.save_checkpoint({"step": 5, "model": {"w": torch.arange(3.0)}, "config": {"a": None}}, path)
    obj = torch.load(path, weights_only=True)
    assert obj["kind"] == ckpt.KIND and obj["step"] == 5 and torch.equal(obj["model"]["w"], torch.arange(3.0))
    assert os.listdir(tmp_path) == ["checkpoint_step_5.pt"]  # no temp file left


def test_load_refuses_what_is_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(1000))
    with pytest.raises(ValueError, match="not a PyTorch checkpoint file"):
        ckpt.load_checkpoint(str(junk))
    truncated = tmp_path / "truncated.pt"
    torch.save({"w": torch.ones(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:-200])
    with pytest.raises(ValueError, match="checkpoint"):
        ckpt.load_checkpoint(str(truncated))
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(1)}, plain)
    with pytest.raises(ValueError, match="not a checkpoint written by train.py"):
        ckpt.load_checkpoint(str(plain))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.load_checkpoint(str(tmp_path / "missing.pt"))


def test_finding_runs_and_checkpoints(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    for run, steps in ((old, (10,)), (new, (2, 10, 100))):
        run.mkdir()
        for s in steps:
            ckpt.save_checkpoint({"step": s}, str(run / f"checkpoint_step_{s}.pt"))
            time.sleep(0.01)
    assert ckpt.newest_run(str(tmp_path)) == str(new)
    assert ckpt.latest_checkpoint(str(new)).endswith("checkpoint_step_100.pt")  # by step, not name
    assert ckpt.best_or_latest(str(new)).endswith("checkpoint_step_100.pt")
    ckpt.save_checkpoint({"step": 10}, str(new / "best_model.pt"))
    assert ckpt.best_or_latest(str(new)).endswith("best_model.pt")
    ckpt.prune(str(new), keep_last=1)
    assert [s for s, _ in ckpt.step_checkpoints(str(new))] == [100]
    assert ckpt.newest_run(str(tmp_path / "none")) is None


def test_a_kill_mid_save_leaves_the_previous_checkpoint(tmp_path):
    path = str(tmp_path / "checkpoint_step_1.pt")
    ckpt.save_checkpoint({"step": 1, "model": {"w": torch.ones(3)}}, path)
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); import torch, checkpoint as c\n"
            f"big = {{'step': 2, 'model': {{'w': torch.randn(64, 1024, 1024)}}}}\n"
            f"print('saving', flush=True)\n"
            f"while True: c.save_checkpoint(big, {path!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = ckpt.load_checkpoint(path)  # whatever instant the kill hit, the file is whole
    assert saved["step"] in (1, 2)


def test_a_failed_write_names_the_file_the_space_and_the_checkpoint_that_is_safe(tmp_path):
    """A real write failure: the process may write files of at most 200 kB (as on a full
    disk, the write call fails); the error says what it needed and what is still intact."""
    first, second = tmp_path / "checkpoint_step_1.pt", tmp_path / "checkpoint_step_2.pt"
    code = (f"import resource, signal, sys; sys.path.insert(0, {ROOT!r})\n"
            f"signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process\n"
            f"import torch, checkpoint as c\n"
            f"c.save_checkpoint({{'step': 1, 'model': {{'w': torch.ones(10)}}}}, {str(first)!r})\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
            f"try:\n"
            f"    c.save_checkpoint({{'step': 2, 'model': {{'w': torch.ones(1_000_000)}}}}, {str(second)!r})\n"
            f"except c.CheckpointWriteError as e:\n"
            f"    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert f"could not write {second}" in out and "File too large" in out
    assert "it needs about 4.0 MB" in out
    assert f"The previous checkpoint, {first}, is intact" in out and "--resume" in out
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_step_1.pt"]  # no partial file, no temp file
    assert ckpt.load_checkpoint(str(first))["step"] == 1
