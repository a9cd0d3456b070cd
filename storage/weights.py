"""Where a model's weights come from, for train.py --init_from, sample.py and export.py:
our checkpoints (checkpoint.py), a Hugging Face GPT-2, Llama or Qwen2 folder or a nanoGPT ckpt.pt
(interop.py, converted to our checkpoint format). One way to find, load and check them.
"""

import os

import torch

from errors import NotFound
from model import GPT, GPTConfig
from storage.checkpoint import (
    best_or_latest,
    clean_state_dict,
    load_checkpoint,
    newest_intact,
    newest_run,
    nonfinite_weights,
    step_checkpoints,
)
from storage.interop import HF_WEIGHTS, hf_model_config, is_hf_folder, load_external
from text.loader import load_meta
from text.tokenizer import HF_KIND


def resolve_checkpoint(path=None, out_dir="checkpoints") -> str:
    """A checkpoint file from a file, a run folder, or (None) the newest run in out_dir.
    A Hugging Face folder is returned as it is; a nanoGPT out_dir gives its ckpt.pt.
    Anything else is a one-line error naming what is missing."""
    if path is None:
        run = newest_run(out_dir)
        if run is None:
            raise FileNotFoundError(
                f"no run with checkpoints under {out_dir!r}; train one with "
                f"`python train.py config/shakespeare_cpu.py` or pass --checkpoint"
            )
        path = run
    if is_hf_folder(path):
        return path
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    if (os.path.isdir(path) or os.path.basename(path) in HF_WEIGHTS) and any(
        os.path.isfile(os.path.join(folder, name)) for name in HF_WEIGHTS
    ):
        raise FileNotFoundError(
            f"{folder} holds Hugging Face weights but no config.json, which says the "
            f"model's shape; copy the model's config.json into it"
        )
    if os.path.isdir(path):
        nanogpt = os.path.join(path, "ckpt.pt")
        found = best_or_latest(path) or (nanogpt if os.path.isfile(nanogpt) else None)
        if found is None:
            raise FileNotFoundError(
                f"folder {path!r} has no best_model.pt or checkpoint_step_N.pt "
                f"(nor config.json of a Hugging Face model, nor nanoGPT's ckpt.pt)"
            )
        return found
    return path  # load_checkpoint says clearly if it is missing or not a checkpoint


def load_weights(path: str) -> dict:
    """A checkpoint dict on the CPU (the GPU never holds the optimizer state it may carry):
    ours, verified against its digest, or a Hugging Face / nanoGPT source converted to our
    format. Weights that hold NaN or inf are refused: nothing useful comes from them."""
    return _finite(path, load_external(path) or load_checkpoint(path))


def source_config(path: str) -> GPTConfig | None:
    """The model shape of a Hugging Face folder, from its config.json alone (for --dry_run,
    which reads no weights); None for any other kind of checkpoint."""
    if not os.path.exists(path):
        raise NotFound(
            f"--init_from={path} does not exist; download the model into it first (e.g. "
            f"huggingface-cli download Qwen/Qwen2.5-3B --local-dir {path}); --dry_run reads its config.json only"
        )
    path = resolve_checkpoint(path)
    return hf_model_config(path) if is_hf_folder(path) else None


def load_resume(
    resume: str, run_dir: str, say=print, set_aside: bool = True
) -> tuple[str | None, dict | None]:
    """(path, contents) of the checkpoint train.py --resume continues; (None, None) when
    "latest"/"auto" finds no step checkpoint in run_dir. "latest", "auto" and a run folder
    take the newest intact step checkpoint, passing over corrupt ones (checkpoint.newest_intact;
    set_aside only applies to run_dir, the folder this process writes). A Hugging Face or
    nanoGPT source is refused: it has no optimizer state or step to continue."""
    if resume in ("latest", "auto") or (os.path.isdir(resume) and step_checkpoints(resume)):
        folder = run_dir if resume in ("latest", "auto") else resume
        path, ckpt = newest_intact(
            folder, say, set_aside and os.path.abspath(folder) == os.path.abspath(run_dir)
        )
        return path, ckpt and _finite(path, ckpt)
    path = resolve_checkpoint(resume)
    external = load_external(path)
    if external is not None:
        raise ValueError(
            f"--resume={resume} is a {external['source']['format']} checkpoint: it has no "
            f"optimizer state or step of this trainer to continue; start from its weights "
            f"with --init_from={resume}"
        )
    return path, _finite(path, load_checkpoint(path))


def _finite(path: str, ckpt: dict) -> dict:
    bad = nonfinite_weights(ckpt["model"])
    if bad:
        raise ValueError(
            f"{path} holds NaN or inf weights ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}): the run diverged before this save; "
            f"use an earlier checkpoint"
        )
    return ckpt


def tokenizer_meta(ckpt: dict) -> dict:
    """The data's meta: stored in the checkpoint, else its data_dir's (loader.load_meta)."""
    if ckpt.get("tokenizer"):
        return ckpt["tokenizer"]
    data_dir = (ckpt.get("config") or {}).get("data_dir")
    if not data_dir:
        raise ValueError(
            "the checkpoint stores no tokenizer and no data_dir; sample from a checkpoint written by train.py"
        )
    return load_meta(data_dir)


def build_model(ckpt: dict, device) -> GPT:
    """The GPT a checkpoint dict describes, with its weights, on device, in eval mode. Built
    on the meta device and given the checkpoint's tensors themselves (assign), so the
    weights are never held twice: a 3B import is one copy, not two."""
    with torch.device("meta"):
        model = GPT(GPTConfig(**ckpt["model_config"]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in clean_state_dict(ckpt["model"]).items()}
    model.load_state_dict(state, assign=True)  # strict: every key, every shape
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"model.py has tensors no checkpoint holds: {left[:3]}")
    return model.to(device).eval()


def check_tokenizer(cfg: GPTConfig, tok):
    """Refuse a tokenizer whose ids are not the model's: the model predicts vocab_size ids,
    and every id the tokenizer makes must have an embedding row. A Hugging Face model may
    predict ids its tokenizer.json lacks (Qwen2.5 pads its embedding past its tokens):
    those decode to no text."""
    low = 0 if tok.name == HF_KIND else cfg.vocab_size
    if not low <= tok.n_vocab <= cfg.padded_vocab:
        raise ValueError(
            f"the model has {cfg.vocab_size} ids but the {tok.name} tokenizer has "
            f"{tok.n_vocab}: the tokenizer does not belong to this model; give the "
            f"checkpoint's data_dir its own meta.json (prepare_data.py writes it)"
        )
