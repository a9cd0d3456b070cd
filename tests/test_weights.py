"""weights.py: which checkpoint a path means, and what --resume may continue."""

import os

import pytest
import torch
from conftest import flip_a_bit, flip_a_bit_in_member

from model import GPT, GPTConfig
from storage import checkpoint as ckpt
from storage import weights


def our_checkpoint(path, step=3):
    model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16))
    ckpt.save_checkpoint(
        {
            "step": step,
            "model": model.state_dict(),
            "model_config": vars(model.config),
            "optimizer": {"state": {}, "param_groups": []},
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
