"""weights.py: which checkpoint a path means, and what --resume may continue."""

import json
import math
import os

import pytest
import torch
from conftest import flip_a_bit, flip_a_bit_in_member

from model import GPT, GPTConfig
from storage import checkpoint as ckpt
from storage import weights


def our_checkpoint(path, step=3, **state):
    torch.manual_seed(step)
    model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16))
    ckpt.save_checkpoint(
        {
            "step": step,
            "model": model.state_dict(),
            "model_config": vars(model.config),
            "optimizer": {"state": {}, "param_groups": []},
            **state,
        },
        str(path),
    )
    return model.state_dict()


@pytest.mark.parametrize("weights_file", ["model.safetensors", "pytorch_model.bin"])
def test_hugging_face_weights_without_config_json_name_it(tmp_path, weights_file):
    (tmp_path / weights_file).write_bytes(b"weights")
    for given in (tmp_path, tmp_path / weights_file):
        with pytest.raises(
            FileNotFoundError,
            match=f"{tmp_path} holds Hugging Face weights but no config.json, "
            f"which says the model's shape; copy the model's config.json",
        ):
            weights.resolve_checkpoint(str(given))


def test_a_nanogpt_out_dir_and_a_run_folder_resolve_to_their_checkpoint(tmp_path):
    torch.save({"model": {}}, tmp_path / "ckpt.pt")
    assert weights.resolve_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt.pt")
    run = tmp_path / "run"
    our_checkpoint(run / "checkpoint_step_3.pt")
    assert weights.resolve_checkpoint(str(run)) == str(run / "checkpoint_step_3.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        FileNotFoundError, match="has no best_model.pt or checkpoint_step_N.pt .*nanoGPT's ckpt.pt"
    ):
        weights.resolve_checkpoint(str(tmp_path / "empty"))


def test_a_pickle_failing_its_crc_is_one_line_through_every_loader(tmp_path):
    """interop's look at the pickle (is it nanoGPT's?) raised zipfile.BadZipFile here."""
    path = tmp_path / "checkpoint_step_3.pt"
    our_checkpoint(path)
    flip_a_bit_in_member(str(path), "data.pkl", at=0)
    with pytest.raises(ckpt.CorruptCheckpoint, match="data.pkl"):
        weights.load_weights(str(path))
    with pytest.raises(
        ValueError,
        match="checkpoint_step_3.pt is corrupt: its zip archive fails its own check "
        r"\(Bad CRC-32",
    ) as e:  # what the commands print as one line
        weights.load_resume(str(path), str(tmp_path))
    assert "\n" not in str(e.value)


def test_resume_from_a_run_folder_takes_its_newest_intact_checkpoint(tmp_path):
    run = tmp_path / "other_run"
    our_checkpoint(run / "checkpoint_step_3.pt", step=3)
    newest = our_checkpoint(run / "checkpoint_step_6.pt", step=6)
    flip_a_bit(str(run / "checkpoint_step_6.pt"), newest["h.0.mlp.c_fc.weight"])
    said = []
    path, obj = weights.load_resume(str(run), str(tmp_path / "this_run"), say=said.append)
    assert path == str(run / "checkpoint_step_3.pt") and obj["step"] == 3
    assert "passing over" in said[0] and "moved" not in said[0]  # another run's folder: nothing renamed
    assert os.path.exists(run / "checkpoint_step_6.pt")
    with pytest.raises(ckpt.CorruptCheckpoint, match="tensor model/h.0.mlp.c_fc.weight"):
        weights.load_resume(
            str(run / "checkpoint_step_6.pt"), str(tmp_path / "this_run")
        )  # asked for by name
    assert weights.load_resume("auto", str(tmp_path / "fresh")) == (None, None)


def evaluated_run(run, val_losses: dict, best=None):
    """A run folder as train.py leaves it: a step checkpoint at each evaluated step after 0,
    the evaluations in metrics.jsonl, and best_model.pt linked to step `best` if given."""
    os.makedirs(run, exist_ok=True)
    baseline = val_losses[0]
    for step in sorted(val_losses)[1:]:
        best_val = val_losses[best] if best is not None and step >= best else math.inf
        our_checkpoint(run / ckpt.step_file(step), step, baseline_val_loss=baseline, best_val_loss=best_val)
    with open(run / "metrics.jsonl", "w") as fh:
        for step, val in val_losses.items():
            fh.write(json.dumps({"kind": "eval", "step": step, "val_loss": val}) + "\n")
    if best is not None:
        os.link(run / ckpt.step_file(best), run / ckpt.BEST_FILE)


def test_a_run_without_best_model_says_which_checkpoint_is_used_and_that_it_diverged(tmp_path):
    """No evaluation beat the start (4.48), and the newest checkpoint is the diverged one: the
    commands say so, and the checkpoint they name instead loads when passed."""
    run = tmp_path / "run"
    evaluated_run(run, {0: 4.48, 2: 4.6, 4: 9.7, 6: 136.0})
    said = []
    path, obj = weights.find_and_load(str(run), say=said.append)
    assert path == str(run / "checkpoint_step_6.pt") and obj["step"] == 6
    assert said == [
        f"note: using {path} (step 6), the newest intact step checkpoint: best_model.pt is missing: no "
        f"evaluation beat the starting point's val loss 4.4800. This one's val loss is 136.0000, worse than "
        f"that: the run diverged; {run / 'checkpoint_step_2.pt'} has the lowest val loss of those kept "
        f"(4.6000): pass --checkpoint={run / 'checkpoint_step_2.pt'} to use it"
    ]
    assert weights.find_and_load(str(run / "checkpoint_step_2.pt"), say=said.append)[1]["step"] == 2
    assert len(said) == 1  # a file named is used as it is, without a note
    evaluated_run(tmp_path / "flat", {0: 4.48, 2: 4.5})
    said = []
    weights.find_and_load(str(tmp_path / "flat"), say=said.append)
    assert said[0].endswith("val loss 4.4800. This one's val loss is 4.5000, worse than that")


def test_a_damaged_best_model_is_passed_over_for_the_newest_intact_step_checkpoint(tmp_path):
    """best_model.pt is a hard link to its step checkpoint: one flipped bit damages both. The
    folder-level commands pass over them, as --resume=auto does, say so, and rename nothing."""
    run = tmp_path / "run"
    evaluated_run(run, {0: 4.48, 2: 4.0, 4: 3.5}, best=4)
    weights_4 = ckpt.load_checkpoint(str(run / ckpt.BEST_FILE))["model"]
    flip_a_bit(str(run / ckpt.BEST_FILE), weights_4["h.0.mlp.c_fc.weight"])
    said = []
    path, obj = weights.find_and_load(str(run), say=said.append)
    assert path == str(run / "checkpoint_step_2.pt") and obj["step"] == 2
    assert said[0].startswith(
        f"warning: passing over {run / ckpt.BEST_FILE}: tensor model/h.0.mlp.c_fc.weight"
    )
    assert said[1].startswith(f"warning: passing over {run / 'checkpoint_step_4.pt'}: tensor model/h.0")
    assert (
        said[2]
        == f"note: using {path} (step 2), the newest intact step checkpoint: best_model.pt is damaged (above)"
    )
    assert sorted(os.listdir(run)) == [
        "best_model.pt",
        "checkpoint_step_2.pt",
        "checkpoint_step_4.pt",
        "metrics.jsonl",
    ]
    os.remove(run / "checkpoint_step_2.pt")  # nothing intact left: one line, naming the newest
    with pytest.raises(
        ckpt.CorruptCheckpoint, match=r"checkpoint_step_4.pt is corrupt: tensor .*is intact either"
    ):
        weights.find_and_load(str(run), say=said.append)
