"""Checkpoint files: what they hold, how they are written, checked and found.

A checkpoint is a dict that loads with torch.load(weights_only=True):
  kind="gpt-checkpoint", version, step, model (state dict, clean keys), model_config,
  config (TrainConfig as a dict), tokenizer (the data's meta.json), optimizer, scaler,
  best_val_loss, evals_without_improvement, elapsed_s, skipped_steps, and digest: a hash of
  every tensor's bytes and of every other entry, written at save and checked at every load
  (digest(); checkpoints saved before digests load with a note).
No RNG state is saved: batches and dropout masks are drawn from seeds of (seed, step, ...),
so a resumed run needs none.
Files in a run folder: checkpoint_step_N.pt (every save_interval and at the end) and
best_model.pt (whenever val loss improves); the names are written here only. When a run saves,
what it keeps and best_model.pt's link are training/checkpointing.py's (the policy).

    python -m storage.checkpoint checkpoints/<run>    # every checkpoint: step, intact / corrupt / no digest
"""

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor

import torch

from errors import BadInput, CannotWrite, NotFound, run_cli
from storage.atomic_files import atomic_path

KIND = "gpt-checkpoint"
VERSION = 1
BEST_FILE = "best_model.pt"
CORRUPT_SUFFIX = ".corrupt"  # a step checkpoint that failed its digest, set aside by resume
_STEP_FILE = re.compile(r"checkpoint_step_(\d+)\.pt$")
# Hashes of a tensor's bytes a digest may use; a checkpoint names its own, so either verifies.
# Saves use CRC-32 (zip's, ext4's): it catches every burst of flipped bits up to 32 long, and
# it is the one whose check fits the cost of one more read of the file (docs/benchmarks.md).
HASHES = {
    "crc32": lambda buf: f"{zlib.crc32(buf):08x}",
    "sha256": lambda buf: hashlib.sha256(buf).hexdigest(),
}
DIGEST = "crc32"
# A checkpoint file is its tensors' bytes and a little more (the pickle, the zip's headers and
# alignment, the filesystem's blocks): space is counted against this much per file.
FILE_OVERHEAD = 1.05


def step_file(step: int) -> str:
    return f"checkpoint_step_{step}.pt"


def is_step_file(path: str) -> bool:
    return bool(_STEP_FILE.search(path))


class CheckpointWriteError(CannotWrite):
    """A checkpoint could not be written. The message says why, what it needed and what is
    still safe; its fix is checkpointing's to size for a run (with_fix)."""

    def __init__(self, path: str, reason: str, need: int, free: int, disk_full: bool, fix: str | None = None):
        self.path, self.reason, self.need, self.free, self.disk_full = path, reason, need, free, disk_full
        folder = os.path.dirname(os.path.abspath(path))
        previous = (
            os.path.join(folder, BEST_FILE)
            if os.path.basename(path) == BEST_FILE
            else latest_checkpoint(folder)
        )
        safe = (
            f"The previous checkpoint, {previous}, is intact"
            if previous and os.path.isfile(previous)
            else "No earlier checkpoint was touched"
        )
        fix = fix or (
            f"free at least {format_bytes(need * FILE_OVERHEAD - free)} there"
            if disk_full
            else f"remove the cause ({reason})"
        )
        super().__init__(
            f"could not write {path} ({'the disk is full: ' if disk_full else ''}{reason}); it needs about "
            f"{format_bytes(need)} and {format_bytes(free)} is free there. {safe}: {fix}"
        )

    def with_fix(self, fix: str) -> "CheckpointWriteError":
        return CheckpointWriteError(self.path, self.reason, self.need, self.free, self.disk_full, fix)


class CorruptCheckpoint(BadInput):
    """A checkpoint whose bytes are not the ones written: `what` fails its digest, or the
    archive fails its own CRC."""

    def __init__(self, path: str, what: str, fix: str | None = None):
        self.path, self.what = path, what
        fix = fix or (
            f"use another checkpoint (`python -m storage.checkpoint {os.path.dirname(path) or '.'}` "
            f"lists which are intact)"
        )
        super().__init__(f"{path} is corrupt: {what}; {fix}")


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
    obj["digest"] = digest(obj, DIGEST)
    try:
        # through a Python file: a failed write raises OSError (ENOSPC, EFBIG, EDQUOT) with its
        # errno, which torch keeps as the context of its own opaque RuntimeError
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save(obj, fh)
    except (OSError, RuntimeError) as e:
        raise _write_failure(path, obj, e) from e


def _write_failure(path: str, obj: dict, error: BaseException) -> CheckpointWriteError:
    need, free = tensor_bytes(obj), shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    cause = error
    while cause is not None and not (isinstance(cause, OSError) and cause.strerror):
        cause = cause.__cause__ or cause.__context__
    reason = cause.strerror if cause is not None else str(error).strip().splitlines()[-1][:160]
    return CheckpointWriteError(path, reason, need, free, disk_full=free < need * FILE_OVERHEAD)


def format_bytes(n_bytes: float) -> str:
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
    return [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not _all_finite(v)
    ]


def _all_finite(t: torch.Tensor, chunk: int = 1 << 24) -> bool:
    """torch.isfinite(t).all(), a chunk of elements at a time: on a whole 1 GB embedding
    its temporaries would add 1.7 GB to an import's peak (bench/bench_import.py)."""
    flat = t.detach().reshape(-1)
    return all(bool(torch.isfinite(flat[i : i + chunk]).all()) for i in range(0, flat.numel(), chunk))


# ---- digests ------------------------------------------------------------------------


def digest(obj: dict, algorithm: str = DIGEST) -> dict:
    """What save_checkpoint stores as obj["digest"]: a hash of each tensor's bytes, by its
    path ("model/wte.weight", "optimizer/state/wte.weight/exp_avg"); a hash of each other
    top-level entry (its values, and each tensor's dtype and shape); and "content", the
    SHA-256 of both tables: the checkpoint's identity, which export.py records."""
    tensors = {}
    shapes = {key: _skeleton(value, key, tensors) for key, value in obj.items() if key != "digest"}
    hashes = _hash_tensors(tensors, HASHES[algorithm])
    entries = {key: _sha256_text(json.dumps(s, allow_nan=True, default=repr)) for key, s in shapes.items()}
    return {
        "algorithm": algorithm,
        "tensors": hashes,
        "entries": entries,
        "content": _sha256_text(json.dumps([hashes, entries])),
    }


def _skeleton(value, path: str, tensors: dict):
    """value with each tensor replaced by its dtype and shape (and collected into tensors)."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value
        return ["tensor", str(value.dtype), list(value.shape)]
    if isinstance(value, dict):
        return {str(k): _skeleton(v, f"{path}/{k}", tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_skeleton(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
    return value


def _hash_tensors(tensors: dict, hash_bytes) -> dict:
    """{path: hash_bytes(the tensor's bytes)} in tensors' order, on every core (hashlib and
    zlib let go of the GIL), largest first so that the cores finish together."""
    order = sorted(tensors, key=lambda k: -tensors[k].numel() * tensors[k].element_size())
    threads = min(
        8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    with ThreadPoolExecutor(threads) as pool:
        hashes = dict(zip(order, pool.map(lambda k: hash_bytes(_tensor_bytes(tensors[k])), order)))
    return {k: hashes[k] for k in tensors}


def _tensor_bytes(t: torch.Tensor):
    """The tensor's bytes as a buffer, without a copy when it is contiguous on the CPU."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    return t.contiguous().reshape(-1).view(torch.uint8).numpy()


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_digest(obj: dict, path: str):
    """Raise CorruptCheckpoint naming the first tensor (or entry) whose bytes differ from
    the digest written with it. obj must carry a digest."""
    stored = obj["digest"]
    if (
        not isinstance(stored, dict)
        or stored.get("algorithm") not in HASHES
        or not isinstance(stored.get("tensors"), dict)
        or not isinstance(stored.get("entries"), dict)
    ):
        raise CorruptCheckpoint(path, "its digest entry is damaged")
    fresh = digest(obj, stored["algorithm"])
    for kind, table in (("tensor", "tensors"), ("entry", "entries")):
        bad = [k for k in {**fresh[table], **stored[table]} if fresh[table].get(k) != stored[table].get(k)]
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise CorruptCheckpoint(path, f"{kind} {bad[0]}{more} does not match the digest written with it")
    if stored.get("content") != fresh["content"]:
        raise CorruptCheckpoint(path, "its digest entry is damaged")


def pickle_bytes(path: str) -> bytes | None:
    """The archive's data.pkl (None if it has none), checked against the zip's own CRC."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            return z.read(names[0]) if names else None
    except zipfile.BadZipFile as e:  # "Bad CRC-32 for file 'archive/data.pkl'", or a damaged directory
        raise CorruptCheckpoint(path, f"its zip archive fails its own check ({e})") from None


# ---- loading ------------------------------------------------------------------------


def load_checkpoint(path: str) -> dict:
    """A checkpoint on the CPU, verified against its digest (one written before checkpoints
    carried one loads with a note); anything else is refused with one line."""
    obj = _read(path)
    if "digest" in obj:
        check_digest(obj, path)
    else:
        print(
            f"note: {path} carries no digest (saved before checkpoints had one); loaded unverified",
            file=sys.stderr,
        )
    return obj


def _read(path: str, mmap: bool = False) -> dict:
    """The checkpoint dict of a file train.py wrote, unverified; a one-line error otherwise."""
    if not os.path.isfile(path):
        raise NotFound(
            f"no checkpoint at {path!r}; give the path of a checkpoint_step_N.pt "
            f"or best_model.pt (train one with `python train.py CONFIG`)"
        )
    if not zipfile.is_zipfile(path):  # every torch.save file since torch 1.6 is a zip archive
        damage = _damage(path)
        if damage:
            raise CorruptCheckpoint(path, f"it is damaged ({damage})")
        raise BadInput(
            f"{path!r} is not a PyTorch checkpoint file; pass a checkpoint_step_N.pt "
            f"or best_model.pt written by train.py"
        )
    try:
        obj = _torch_load(path, mmap)
    except Exception as e:  # truncated archive, a damaged pickle, or objects a weights-only load refuses
        with contextlib.suppress(OSError):
            pickle_bytes(path)  # a pickle that fails its CRC is corruption: say so
        first_line = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        if _ours(path):
            raise CorruptCheckpoint(
                path, f"it is damaged (torch cannot read it: {type(e).__name__}: {first_line})"
            ) from None
        raise BadInput(
            f"{path!r} is not a readable checkpoint ({type(e).__name__}: {first_line}); "
            f"pass a checkpoint_step_N.pt or best_model.pt written by train.py"
        ) from None
    if not isinstance(obj, dict) or obj.get("kind") != KIND:
        raise BadInput(
            f"{path!r} is not a checkpoint written by train.py "
            f"(no kind={KIND!r} entry); pass a checkpoint_step_N.pt or best_model.pt"
        )
    return obj


def _ours(path: str) -> bool:
    """A file named as train.py names its checkpoints (set aside or not)."""
    name = os.path.basename(path).removesuffix(CORRUPT_SUFFIX)
    return name == BEST_FILE or bool(_STEP_FILE.fullmatch(name))


def _damage(path: str) -> str | None:
    """How a file that is not a whole zip archive looks damaged (None: it looks like another
    kind of file): empty, zeroed (as a crash can leave a file's blocks), cut short, or named
    as train.py names its checkpoints."""
    size = os.path.getsize(path)
    if size == 0:
        return "empty: 0 bytes"
    with open(path, "rb") as fh:
        head = fh.read(1 << 20)
        fh.seek(max(size - (1 << 20), 0))
        tail = fh.read(1 << 20)
    if not head.strip(b"\0") and not tail.strip(b"\0"):
        return f"its {size:,} bytes are zeros"
    if head.startswith(b"PK\x03\x04"):  # a zip archive's first record, without its end: truncated
        return f"cut short: its zip archive ends after {size:,} bytes without its closing directory"
    if _ours(path):
        return "not a whole zip archive, as every checkpoint train.py writes is"
    return None


def _torch_load(path: str, mmap: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception:
        if not mmap:
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # a layout torch cannot map: read it


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


def stale_temp_files(run_dir: str) -> list[str]:
    """The hidden temp files a kill mid-save leaves, each as large as a checkpoint."""
    return glob.glob(os.path.join(run_dir, ".*.pt.tmp.*"))


# ---- a run folder's checkpoints -----------------------------------------------------------


def newest_intact(
    run_dir: str, say=print, set_aside: bool = True, resuming: bool = True
) -> tuple[str | None, dict | None]:
    """(path, contents) of the newest step checkpoint of run_dir that loads and matches its
    digest; (None, None) when there is none. Newer ones that fail are passed over, and say()
    tells which and why (and, resuming, which one the run resumes from). set_aside (for the
    run folder's one writer) renames them to NAME.corrupt, so that neither a later resume nor keep_last's rotation counts them. When
    every step checkpoint fails, nothing is renamed and the error names the newest."""
    failed = []
    for _, path in reversed(step_checkpoints(run_dir)):
        try:
            obj = load_checkpoint(path)
        except FileNotFoundError:  # set aside by the writer while this rank looked
            continue
        except (ValueError, OSError) as e:
            failed.append((path, e.what if isinstance(e, CorruptCheckpoint) else str(e)))
            continue
        for bad, what in failed:
            moved = ""
            if set_aside:
                os.replace(bad, bad + CORRUPT_SUFFIX)
                moved = f"; moved it to {os.path.basename(bad) + CORRUPT_SUFFIX}"
            if say:
                say(f"warning: passing over {bad}: {what}{moved}")
        if failed and say and resuming:
            say(f"resuming from {path}, the newest intact checkpoint (step {obj.get('step')})")
        return path, obj
    if failed:
        raise CorruptCheckpoint(
            failed[0][0],
            failed[0][1],
            f"no older step checkpoint in {run_dir} is intact "
            f"either ({len(failed)} checked): restore one from a "
            f"copy, or start over under a new --run_name",
        )
    return None, None


def checkpoint_state(path: str) -> tuple[int | None, str, str]:
    """(step, state, detail) of a checkpoint file: state "intact" (detail: its content digest),
    "corrupt" (what fails) or "no digest"."""
    m = _STEP_FILE.search(path.removesuffix(CORRUPT_SUFFIX))
    step = int(m.group(1)) if m else None
    try:
        obj = _read(path, mmap=True)  # hashing reads it once; nothing is copied into memory
        step = obj.get("step", step)
        if "digest" not in obj:
            return step, "no digest", "saved before checkpoints carried one; loads unverified"
        check_digest(obj, path)
    except CorruptCheckpoint as e:
        return step, "corrupt", e.what
    except (ValueError, OSError) as e:
        return step, "corrupt", str(e).split("; ")[0]  # what is wrong, without the advice
    return step, "intact", f"sha256:{obj['digest']['content']}"


def set_aside_files(run_dir: str) -> list[str]:
    """Step checkpoints a resume set aside as corrupt (NAME.corrupt): kept, never used."""
    return sorted(glob.glob(os.path.join(run_dir, "*.pt" + CORRUPT_SUFFIX)))


def list_checkpoints(run_dir: str) -> tuple[list[str], bool]:
    """(lines naming each checkpoint's step and state, and which file each command would use;
    whether one the commands may use is corrupt). Files a resume set aside are listed apart:
    no command uses them, so they do not count."""
    if not os.path.isdir(run_dir):
        raise NotFound(f"no run folder at {run_dir!r}; pass one like checkpoints/<run_name>")
    best = os.path.join(run_dir, BEST_FILE)
    used = [p for _, p in step_checkpoints(run_dir)] + ([best] if os.path.isfile(best) else [])
    rows = [(os.path.basename(p), *checkpoint_state(p)) for p in used]
    aside = [(os.path.basename(p), *checkpoint_state(p)) for p in set_aside_files(run_dir)]
    if not rows and not aside:
        return [f"{run_dir}: no checkpoints"], False
    width = max(len(r[0]) for r in rows + aside)
    show = lambda rows: [
        f"  {name:{width}}  step {'?' if step is None else step:<8} {state:10} {detail}"
        for name, step, state, detail in rows
    ]
    lines = [f"{run_dir}: {len(rows)} checkpoint files", *show(rows)]
    if aside:
        lines += [f"set aside as corrupt by a resume ({len(aside)}; no command uses them):", *show(aside)]
    usable = [name for name, _, state, _ in rows if state != "corrupt"]
    steps = [name for name in usable if name != BEST_FILE]
    pick = BEST_FILE if BEST_FILE in usable else steps[-1] if steps else None
    lines.append(
        f"--resume continues from {steps[-1] if steps else 'none (no intact step checkpoint)'}; "
        f"sample.py, export.py and evaluate.py use {pick or 'none (no intact checkpoint)'}"
    )
    return lines, any(r[2] == "corrupt" for r in rows)


def main(argv=None) -> int:
    folders = sys.argv[1:] if argv is None else argv
    if not folders or any(a.startswith("-") for a in folders):
        print(
            "usage: python -m storage.checkpoint RUN_FOLDER [RUN_FOLDER ...]\n"
            "lists each checkpoint with its step and state (intact, corrupt, no digest), and "
            "which one each command uses; exit status 1 when one a command may use is corrupt "
            "(those a resume set aside are listed apart)"
        )
        return 0 if folders and folders[0] in ("-h", "--help") else 2
    any_corrupt = False
    for folder in folders:
        lines, corrupt = list_checkpoints(folder)
        print("\n".join(lines), flush=True)
        any_corrupt |= corrupt
    return 1 if any_corrupt else 0


if __name__ == "__main__":
    run_cli(main)
