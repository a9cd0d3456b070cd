import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import flip_a_bit, flip_a_bit_in_member, tmpfs

from storage import checkpoint as ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_clean_state_dict_strips_only_leading_wrapper_prefixes():
    state = {"module._orig_mod.h.0.attn.c_attn.weight": 1, "_orig_mod.wte.weight": 2, "h.0.submodule.w": 3}
    assert ckpt.clean_state_dict(state) == {
        "h.0.attn.c_attn.weight": 1,
        "wte.weight": 2,
        "h.0.submodule.w": 3,
    }


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
    assert ckpt.newest_run(str(tmp_path / "none")) is None


def test_a_kill_mid_save_leaves_the_previous_checkpoint(tmp_path):
    path = str(tmp_path / "checkpoint_step_1.pt")
    ckpt.save_checkpoint({"step": 1, "model": {"w": torch.ones(3)}}, path)
    code = (
        "import sys; import torch; from storage import checkpoint as c\n"
        f"big = {{'step': 2, 'model': {{'w': torch.randn(64, 1024, 1024)}}}}\n"
        f"print('saving', flush=True)\n"
        f"while True: c.save_checkpoint(big, {path!r})\n"
    )
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
    code = (
        "import resource, signal, sys\n"
        f"signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process\n"
        f"import torch; from storage import checkpoint as c\n"
        f"c.save_checkpoint({{'step': 1, 'model': {{'w': torch.ones(10)}}}}, {str(first)!r})\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        f"try:\n"
        f"    c.save_checkpoint({{'step': 2, 'model': {{'w': torch.ones(1_000_000)}}}}, {str(second)!r})\n"
        f"except c.CheckpointWriteError as e:\n"
        f"    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert f"could not write {second}" in out and "File too large" in out
    assert "it needs about 4.0 MB" in out
    assert f"The previous checkpoint, {first}, is intact: remove the cause (File too large)" in out
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_step_1.pt"]  # no partial file, no temp file
    assert ckpt.load_checkpoint(str(first))["step"] == 1


# ---- digests: nothing corrupt is used in silence ----------------------------------------


def tiny_checkpoint(step=5, seed=0) -> dict:
    """What train.py saves, in miniature: weights, AdamW-like state keyed by name, config."""
    g = torch.Generator().manual_seed(seed)
    model = {
        "wte.weight": torch.randn(16, 8, generator=g),
        "h.0.mlp.c_fc.weight": torch.randn(32, 8, generator=g),
        "h.0.ln_1.bias": torch.randn(8, generator=g),
    }
    state = {
        k: {
            "step": torch.tensor(float(step)),
            "exp_avg": torch.randn(v.shape, generator=g),
            "exp_avg_sq": torch.rand(v.shape, generator=g),
        }
        for k, v in model.items()
    }
    return {
        "step": step,
        "model": model,
        "model_config": {"n_layer": 1, "n_embd": 8},
        "optimizer": {
            "state": state,
            "param_groups": [{"lr": 3e-4, "betas": (0.9, 0.95), "params": list(model)}],
        },
        "config": {"learning_rate": 3e-4, "run_name": "t"},
        "best_val_loss": 4.25,
    }


@pytest.mark.parametrize("algorithm", sorted(ckpt.HASHES))
def test_a_flipped_bit_in_any_tensor_is_one_line_naming_the_file_and_the_tensor(
    tmp_path, monkeypatch, algorithm
):
    monkeypatch.setattr(ckpt, "DIGEST", algorithm)  # a checkpoint names its hash: each one verifies
    path = str(tmp_path / "checkpoint_step_5.pt")
    obj = tiny_checkpoint()
    ckpt.save_checkpoint(obj, path)
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["wte.weight"], obj["model"]["wte.weight"])
    assert torch.load(path, weights_only=True)["digest"]["algorithm"] == algorithm
    flip_a_bit(path, obj["model"]["h.0.mlp.c_fc.weight"])
    loaded = torch.load(path, weights_only=True)  # torch itself reads it without a word
    assert not torch.equal(loaded["model"]["h.0.mlp.c_fc.weight"], obj["model"]["h.0.mlp.c_fc.weight"])
    with pytest.raises(ckpt.CorruptCheckpoint) as e:
        ckpt.load_checkpoint(path)
    message = str(e.value)
    assert message.startswith(f"{path} is corrupt: tensor model/h.0.mlp.c_fc.weight does not match")
    assert "\n" not in message and isinstance(e.value, ValueError)  # what every CLI prints as one line

    other = str(tmp_path / "best_model.pt")
    ckpt.save_checkpoint(obj, other)
    flip_a_bit(other, obj["optimizer"]["state"]["wte.weight"]["exp_avg_sq"])
    with pytest.raises(ckpt.CorruptCheckpoint, match="tensor optimizer/state/wte.weight/exp_avg_sq does not"):
        ckpt.load_checkpoint(other)


def test_a_changed_value_outside_the_tensors_is_named_too(tmp_path):
    """The step, the config, the optimizer's settings: a change there fails the digest of
    its entry (here rewritten by torch.save, so no CRC of the archive can catch it)."""
    path = str(tmp_path / "checkpoint_step_5.pt")
    ckpt.save_checkpoint(tiny_checkpoint(), path)
    for key, change in (("step", 50), ("config", {"learning_rate": 3e-3, "run_name": "t"})):
        obj = torch.load(path, weights_only=True)
        torch.save({**obj, key: change}, path)
        with pytest.raises(ckpt.CorruptCheckpoint, match=f"entry {key} does not match"):
            ckpt.load_checkpoint(path)
        torch.save(obj, path)
        ckpt.load_checkpoint(path)


def test_a_pickle_that_fails_its_crc_is_one_line(tmp_path):
    path = str(tmp_path / "checkpoint_step_5.pt")
    ckpt.save_checkpoint(tiny_checkpoint(), path)
    flip_a_bit_in_member(path, "data.pkl", at=0)  # the pickle's first opcode: it no longer loads
    with pytest.raises(
        ckpt.CorruptCheckpoint,
        match=r"is corrupt: its zip archive fails its own check "
        r"\(Bad CRC-32 for file '.*data.pkl'\)",
    ) as e:
        ckpt.load_checkpoint(path)
    assert "\n" not in str(e.value)


def test_a_checkpoint_from_before_digests_loads_with_a_note(tmp_path, capsys):
    path = str(tmp_path / "checkpoint_step_5.pt")
    torch.save({"kind": ckpt.KIND, "version": 1, **tiny_checkpoint()}, path)  # as saved until now
    assert ckpt.load_checkpoint(path)["step"] == 5
    assert f"note: {path} carries no digest" in capsys.readouterr().err
    assert ckpt.checkpoint_state(path)[:2] == (5, "no digest")


def corrupt_run(run, steps=(1, 2, 3), bad=(3,)):
    """A run folder with step checkpoints at steps, a bit flipped in those in bad."""
    for s in steps:
        obj = tiny_checkpoint(step=s, seed=s)
        ckpt.save_checkpoint(obj, str(run / ckpt.step_file(s)))
        if s in bad:
            flip_a_bit(str(run / ckpt.step_file(s)), obj["model"]["wte.weight"])


def test_resume_passes_over_a_corrupt_newest_checkpoint_and_says_so(tmp_path):
    said = []
    corrupt_run(tmp_path, bad=(2, 3))
    path, obj = ckpt.newest_intact(str(tmp_path), say=said.append)
    assert path == str(tmp_path / "checkpoint_step_1.pt") and obj["step"] == 1
    assert said[0].startswith(
        f"warning: passing over {tmp_path / 'checkpoint_step_3.pt'}: tensor model/wte.weight"
    )
    assert "moved it to checkpoint_step_3.pt.corrupt" in said[0] and "checkpoint_step_2.pt" in said[1]
    assert said[2] == f"resuming from {path}, the newest intact checkpoint (step 1)"
    # set aside: a later resume, and keep_last's rotation, see the intact one only
    assert [s for s, _ in ckpt.step_checkpoints(str(tmp_path))] == [1]
    assert ckpt.newest_intact(str(tmp_path), say=said.append)[0] == path and len(said) == 3


def test_a_reader_that_is_not_the_writer_passes_over_without_moving_anything(tmp_path):
    corrupt_run(tmp_path)
    assert ckpt.newest_intact(str(tmp_path), say=None, set_aside=False)[0].endswith("checkpoint_step_2.pt")
    assert [s for s, _ in ckpt.step_checkpoints(str(tmp_path))] == [1, 2, 3]


def test_when_no_checkpoint_is_intact_resume_refuses_and_moves_nothing(tmp_path):
    corrupt_run(tmp_path, steps=(1, 2), bad=(1, 2))
    with pytest.raises(
        ckpt.CorruptCheckpoint,
        match=r"checkpoint_step_2.pt is corrupt: tensor model/wte.weight "
        r".*no older step checkpoint in .* is intact either \(2 checked\)",
    ):
        ckpt.newest_intact(str(tmp_path), say=None)
    assert [s for s, _ in ckpt.step_checkpoints(str(tmp_path))] == [1, 2]
    assert ckpt.newest_intact(str(tmp_path / "empty"), say=None) == (None, None)


def test_the_listing_command_names_each_checkpoints_step_and_state(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    corrupt_run(run, steps=(10, 20, 30), bad=(20,))
    torch.save({"kind": ckpt.KIND, "version": 1, **tiny_checkpoint(step=30)}, run / ckpt.BEST_FILE)
    done = subprocess.run(
        [sys.executable, "-m", "storage.checkpoint", str(run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr  # one is corrupt: a script can act on it
    rows = {line.split()[0]: line.split()[1:4] for line in done.stdout.splitlines()[1:-1]}
    digest = ckpt.load_checkpoint(str(run / "checkpoint_step_10.pt"))["digest"]["content"]
    assert rows == {
        "checkpoint_step_10.pt": ["step", "10", "intact"],
        "checkpoint_step_20.pt": ["step", "20", "corrupt"],
        "checkpoint_step_30.pt": ["step", "30", "intact"],
        "best_model.pt": ["step", "30", "no"],
    }
    assert f"sha256:{digest}" in done.stdout and "tensor model/wte.weight does not match" in done.stdout
    assert done.stdout.splitlines()[-1] == (
        "--resume continues from checkpoint_step_30.pt; sample.py, export.py and evaluate.py use best_model.pt"
    )
    os.remove(run / "checkpoint_step_20.pt")
    assert ckpt.main([str(run)]) == 0


def test_the_listing_keeps_set_aside_files_apart_and_exits_by_what_is_used(tmp_path, capsys):
    """After a resume set a corrupt newest checkpoint aside, the folder is healthy: the listing
    shows the .corrupt file apart, names the intact one each command uses, and exits 0."""
    corrupt_run(tmp_path, steps=(1, 2, 3), bad=(3,))
    assert ckpt.main([str(tmp_path)]) == 1  # the newest is corrupt, and not yet set aside
    ckpt.newest_intact(str(tmp_path), say=None)  # what --resume=auto does
    capsys.readouterr()
    assert ckpt.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{tmp_path}: 2 checkpoint files"
    assert lines[3] == "set aside as corrupt by a resume (1; no command uses them):"
    assert lines[4].split()[:4] == ["checkpoint_step_3.pt.corrupt", "step", "3", "corrupt"]
    assert lines[5] == (
        "--resume continues from checkpoint_step_2.pt; sample.py, export.py and evaluate.py use "
        "checkpoint_step_2.pt"
    )


# ---- disk space ---------------------------------------------------------------------


def test_a_full_disk_names_the_space_the_save_needs(tmp_path):
    """A real ENOSPC on a 2 MB tmpfs: one line naming the file, the space it needs and the one
    still intact (advice for a run's whole rest is checkpointing's: test_checkpointing.py)."""
    with tmpfs(tmp_path / "disk", "size=2m") as disk:
        obj = {"step": 0, "model": {"w": torch.randn(100_000)}}  # 400 kB a file
        with pytest.raises(ckpt.CheckpointWriteError) as e:
            for step in range(1, 10):
                ckpt.save_checkpoint({**obj, "step": step}, os.path.join(disk, ckpt.step_file(step)))
        message = str(e.value)
        assert "the disk is full: No space left on device" in message and "\n" not in message
        previous = os.path.join(disk, ckpt.step_file(step - 1))
        assert f"The previous checkpoint, {previous}, is intact: free at least" in message
        assert e.value.disk_full and e.value.need == 400_000 and e.value.free < e.value.need
        assert sorted(os.listdir(disk)) == [ckpt.step_file(s) for s in sorted(range(1, step), key=str)]


def test_a_truncated_or_zeroed_checkpoint_is_named_damaged_and_the_listing_it_names_finds_one_intact(
    tmp_path,
):
    """A file train.py wrote, cut short or zeroed by a crash: said to be damaged (not "not a
    checkpoint"), in load and in resume's pass-over note; the listing command the message
    names shows which one is intact, and that one loads."""
    corrupt_run(tmp_path, steps=(1, 2, 3, 4), bad=())
    cut, zeroed, empty = (tmp_path / ckpt.step_file(s) for s in (4, 3, 2))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    zeroed.write_bytes(bytes(zeroed.stat().st_size))
    empty.write_bytes(b"")
    messages = {}
    for path, what in ((cut, "cut short"), (zeroed, "bytes are zeros"), (empty, "empty: 0 bytes")):
        with pytest.raises(ckpt.CorruptCheckpoint) as e:
            ckpt.load_checkpoint(str(path))
        messages[path] = str(e.value)
        assert f"{path} is corrupt: it is damaged (" in messages[path] and what in messages[path]
        assert messages[path].endswith(f"(`python -m storage.checkpoint {tmp_path}` lists which are intact)")
    said = []
    assert ckpt.newest_intact(str(tmp_path), say=said.append, set_aside=False)[0].endswith(ckpt.step_file(1))
    assert said[0].startswith(f"warning: passing over {cut}: it is damaged (cut short")
    lines, corrupt = ckpt.list_checkpoints(str(tmp_path))  # the command the message names
    states = {line.split()[0]: line.split()[3] for line in lines[1:-1]}
    assert states == {f"checkpoint_step_{s}.pt": "intact" if s == 1 else "corrupt" for s in (1, 2, 3, 4)}
    assert lines[-1].startswith("--resume continues from checkpoint_step_1.pt") and corrupt
    assert ckpt.load_checkpoint(str(tmp_path / ckpt.step_file(1)))["step"] == 1  # the intact one, used
