"""Where a model's weights come from, for train.py --init_from, sample.py and export.py:
our checkpoints (checkpoint.py), a Hugging Face GPT-2, Llama or Qwen2 folder or a nanoGPT ckpt.pt
(interop.py, converted to our checkpoint format). One way to find, load and check them.
"""

import json
import math
import os
import sys

import torch

from errors import BadInput, NotFound
from model import GPT, GPTConfig
from storage.checkpoint import (
    BEST_FILE,
    CorruptCheckpoint,
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
            raise NotFound(
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
        raise NotFound(
            f"{folder} holds Hugging Face weights but no config.json, which says the "
            f"model's shape; copy the model's config.json into it"
        )
    if os.path.isdir(path):
        nanogpt = os.path.join(path, "ckpt.pt")
        found = best_or_latest(path) or (nanogpt if os.path.isfile(nanogpt) else None)
        if found is None:
            raise NotFound(
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


def _stderr(line: str):
    print(line, file=sys.stderr)


def find_and_load(spec=None, out_dir="checkpoints", say=_stderr) -> tuple[str, dict]:
    """(path, checkpoint dict) of the weights sample.py, export.py, evaluate.py and --init_from
    use: a file as given; for a run folder of ours (or, None, the newest run in out_dir) its
    best_model.pt, else its newest intact step checkpoint, and say() says which and why (the
    run never beat its starting point, it diverged, best_model.pt fails its digest)."""
    path = resolve_checkpoint(spec, out_dir)
    run_dir = os.path.dirname(path)
    if (spec is not None and not os.path.isdir(spec)) or path != best_or_latest(run_dir):
        return path, load_weights(path)  # a file named, or a folder that is not a run of ours
    best = os.path.join(run_dir, BEST_FILE)
    passed_over = None
    if os.path.isfile(best):
        try:
            return best, load_weights(best)
        except CorruptCheckpoint as e:
            say(f"warning: passing over {best}: {e.what}")
            passed_over = e
    found, obj = newest_intact(run_dir, say, set_aside=False, resuming=False)
    if found is None:
        if passed_over is not None:
            raise CorruptCheckpoint(
                best, passed_over.what, f"no step checkpoint in {run_dir} is intact either"
            )
        raise NotFound(f"folder {run_dir!r} has no intact checkpoint")
    why = "is damaged (above)" if passed_over is not None else _why_no_best(run_dir, obj)
    say(f"note: using {found} (step {obj.get('step')}), the newest intact step checkpoint: {BEST_FILE} {why}")
    return found, _finite(found, obj)


def _why_no_best(run_dir: str, obj: dict) -> str:
    """Why a run folder has no best_model.pt, from the checkpoint's state and the run's
    evaluations (metrics.jsonl), and whether the checkpoint used is a diverged one."""
    cfg = obj.get("config") or {}
    if cfg.get("eval_batches") == 0:
        return "is missing: the run never evaluated (eval_batches=0)"
    baseline = obj.get("baseline_val_loss", math.inf)
    if not math.isfinite(obj.get("best_val_loss", math.inf)) and math.isfinite(baseline):
        why = f"is missing: no evaluation beat the starting point's val loss {baseline:.4f}"
    else:
        return "is missing"
    evals = _val_losses(run_dir)
    val = evals.get(obj.get("step"))
    if val is not None and not val <= baseline:
        diverged = ": the run diverged" if val >= 2 * baseline else ""
        why += f". This one's val loss is {val:.4f}, worse than that{diverged}"
        kept = {step: path for step, path in step_checkpoints(run_dir) if step in evals}
        lowest = min(kept, key=lambda s: evals[s], default=None)
        if lowest is not None and lowest != obj.get("step"):
            why += (
                f"; {kept[lowest]} has the lowest val loss of those kept ({evals[lowest]:.4f}): "
                f"pass --checkpoint={kept[lowest]} to use it"
            )
    return why


def _val_losses(run_dir: str) -> dict:
    """{step: val loss} of a run folder's evaluations in its metrics.jsonl ({} without one)."""
    losses = {}
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("kind") == "eval":
                    losses[record.get("step")] = record.get("val_loss")
    except OSError:
        pass
    return {s: v for s, v in losses.items() if isinstance(v, (int, float)) and math.isfinite(v)}


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
        raise BadInput(
            f"--resume={resume} is a {external['source']['format']} checkpoint: it has no "
            f"optimizer state or step of this trainer to continue; start from its weights "
            f"with --init_from={resume}"
        )
    return path, _finite(path, load_checkpoint(path))


def _finite(path: str, ckpt: dict) -> dict:
    bad = nonfinite_weights(ckpt["model"])
    if bad:
        raise BadInput(
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
        raise BadInput(
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
        raise BadInput(
            f"the model has {cfg.vocab_size} ids but the {tok.name} tokenizer has "
            f"{tok.n_vocab}: the tokenizer does not belong to this model; give the "
            f"checkpoint's data_dir its own meta.json (prepare_data.py writes it)"
        )
