"""Checkpoint files: what they hold, how they are written, and how runs are found.

A checkpoint is a dict that loads with torch.load(weights_only=True):
  kind="gpt-checkpoint", version, step, model (state dict, clean keys), model_config,
  config (TrainConfig as a dict), tokenizer (the data's meta.json), optimizer, scaler,
  best_val_loss, evals_without_improvement, elapsed_s, skipped_steps.
No RNG state is saved: batches and dropout masks are drawn from seeds of (seed, step, ...),
so a resumed run needs none.
Files in a run folder: checkpoint_step_N.pt (every save_interval and at the end) and
best_model.pt (whenever val loss improves); the names are written here only.
"""
import glob
import os
import re
import shutil
import zipfile

import torch

from atomic_files import atomic_path

KIND = "gpt-checkpoint"
VERSION = 1
BEST_FILE = "best_model.pt"
_STEP_FILE = re.compile(r"checkpoint_step_(\d+)\.pt$")


def step_file(step: int) -> str:
    return f"checkpoint_step_{step}.pt"


def is_step_file(path: str) -> bool:
    return bool(_STEP_FILE.search(path))


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message says why and what is still safe."""


def clean_state_dict(state: dict) -> dict:
    """Drop the wrappers' prefixes (torch.compile's `_orig_mod.`, DDP's `module.`)."""
    out = {}
    for k, v in state.items():
        while k.startswith(("_orig_mod.", "module.")):
            k = k.removeprefix("_orig_mod.").removeprefix("module.")
        out[k] = v
    return out


def save_checkpoint(obj: dict, path: str):
    """Write atomically: a kill mid-save leaves the previous file (or none), never half.
    A failed write (a full disk, a quota) raises CheckpointWriteError, which names the
    file, the space it needs and the checkpoint that is still intact."""
    obj = {"kind": KIND, "version": VERSION, **obj}
    try:
        # through a Python file: a failed write raises OSError (ENOSPC, EFBIG, EDQUOT) with its
        # errno, which torch keeps as the context of its own opaque RuntimeError
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save(obj, fh)
    except (OSError, RuntimeError) as e:
        raise CheckpointWriteError(_write_failure(path, obj, e)) from e


def _write_failure(path: str, obj: dict, error: BaseException) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    need, free = tensor_bytes(obj), shutil.disk_usage(folder).free
    cause = error
    while cause is not None and not (isinstance(cause, OSError) and cause.strerror):
        cause = cause.__cause__ or cause.__context__
    reason = cause.strerror if cause is not None else str(error).strip().splitlines()[-1][:160]
    full = free < need * 1.05
    previous = (os.path.join(folder, BEST_FILE) if os.path.basename(path) == BEST_FILE
                else latest_checkpoint(folder))
    safe = (f"The previous checkpoint, {previous}, is intact" if previous and os.path.isfile(previous)
            else "No earlier checkpoint was touched")
    return (f"could not write {path} ({'the disk is full: ' if full else ''}{reason}); it needs about "
            f"{_size(need)} and {_size(free)} is free there. {safe}: free some space (or set --keep_last) "
            f"and continue with --resume")


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.1f} MB"


def tensor_bytes(obj) -> int:
    """Bytes of all tensors in a nested dict/list: about the size of the saved file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def nonfinite_weights(state: dict) -> list[str]:
    """Names of floating-point tensors in a state dict that hold NaN or inf."""
    return [k for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load a checkpoint saved on any device onto map_location; refuse anything else."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}; give the path of a checkpoint_step_N.pt "
                                f"or best_model.pt (train one with `python train.py CONFIG`)")
    if not zipfile.is_zipfile(path):  # every torch.save file since torch 1.6 is a zip archive
        raise ValueError(f"{path!r} is not a PyTorch checkpoint file; pass a checkpoint_step_N.pt "
                         f"or best_model.pt written by train.py")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated archive, or objects a weights-only load refuses
        first_line = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        raise ValueError(f"{path!r} is not a readable checkpoint ({type(e).__name__}: {first_line}); "
                         f"pass a checkpoint_step_N.pt or best_model.pt written by train.py") from None
    if not isinstance(obj, dict) or obj.get("kind") != KIND:
        raise ValueError(f"{path!r} is not a checkpoint written by train.py "
                         f"(no kind={KIND!r} entry); pass a checkpoint_step_N.pt or best_model.pt")
    return obj


def step_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the run's step checkpoints, oldest first."""
    found = []
    for path in glob.glob(os.path.join(run_dir, "checkpoint_step_*.pt")):
        m = _STEP_FILE.search(path)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str) -> str | None:
    ckpts = step_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


def best_or_latest(run_dir: str) -> str | None:
    best = os.path.join(run_dir, BEST_FILE)
    return best if os.path.isfile(best) else latest_checkpoint(run_dir)


def newest_run(out_dir: str = "checkpoints") -> str | None:
    """The run folder under out_dir whose newest checkpoint file is most recent."""
    runs = []
    for d in glob.glob(os.path.join(out_dir, "*")):
        pts = glob.glob(os.path.join(d, "*.pt"))
        if os.path.isdir(d) and pts:
            runs.append((max(os.path.getmtime(p) for p in pts), d))
    return max(runs)[1] if runs else None


def remove_stale_temp_files(run_dir: str):
    """A kill mid-save leaves a hidden temp file as large as a checkpoint: drop them."""
    for path in glob.glob(os.path.join(run_dir, ".*.pt.tmp.*")):
        os.remove(path)


def prune(run_dir: str, keep_last: int):
    """Delete all but the newest keep_last step checkpoints (best_model.pt stays)."""
    if keep_last > 0:
        for _, path in step_checkpoints(run_dir)[:-keep_last]:
            os.remove(path)
