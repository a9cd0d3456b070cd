"""What checkpoint digests cost: saving and loading a checkpoint of a real shape, with and
without the SHA-256 digest, against reading the file once.

    python bench/bench_checkpoint.py                       # gpt2-124m: 1.5 GB with AdamW state
    python bench/bench_checkpoint.py --preset=tiny --repeats=5

The goal: verification adds at most the time of one extra read of the file. Reads are timed
twice: warm (the file is in the page cache, as right after a save) and cold (its pages
dropped first with posix_fadvise, as a resume after a reboot or from a network disk sees).
The optimizer state is AdamW's after one step with random gradients: the tensors a
checkpoint really holds (their values do not change what hashing costs).
"""

import argparse
import os
import statistics
import tempfile
import time

import torch

from model import GPT, PRESETS, preset_config
from storage import checkpoint as ckpt


def state_of(preset: str) -> dict:
    """A checkpoint dict as train.py saves it: weights, AdamW state, config."""
    torch.manual_seed(0)
    model = GPT(preset_config(preset))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    return {
        "step": 1,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "model_config": vars(model.config),
        "config": {"model": preset},
    }


def drop_from_page_cache(path: str):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_once(path: str):
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass


def timed(fn, repeats: int, before=None) -> float:
    """Median seconds of fn() over repeats runs (before() runs untimed ahead of each)."""
    times = []
    for _ in range(repeats):
        if before:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2-124m", choices=sorted(PRESETS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temp folder)")
    args = p.parse_args(argv)
    obj = state_of(args.preset)
    full = {"kind": ckpt.KIND, "version": ckpt.VERSION, **obj}
    rows = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        plain, ours = os.path.join(folder, "plain.pt"), os.path.join(folder, "checkpoint_step_1.pt")
        rows["torch.save (no digest)"] = timed(lambda: torch.save(full, plain), args.repeats)
        for temp, drop in (("warm", None), ("cold", lambda: drop_from_page_cache(plain))):
            rows[f"read the file once, {temp}"] = timed(lambda: read_once(plain), args.repeats, drop)
            rows[f"torch.load, {temp} (no check)"] = timed(
                lambda: torch.load(plain, weights_only=True), args.repeats, drop
            )
        for algorithm in ckpt.HASHES:
            ckpt.DIGEST = algorithm  # what save_checkpoint writes
            rows[f"{algorithm}: digest alone"] = timed(lambda a=algorithm: ckpt.digest(full, a), args.repeats)
            rows[f"{algorithm}: save_checkpoint"] = timed(
                lambda: ckpt.save_checkpoint(obj, ours), args.repeats
            )
            for temp, drop in (("warm", None), ("cold", lambda: drop_from_page_cache(ours))):
                rows[f"{algorithm}: load_checkpoint, {temp} (verified)"] = timed(
                    lambda: ckpt.load_checkpoint(ours), args.repeats, drop
                )
        size = os.path.getsize(plain)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"{args.preset}: checkpoint {size / 1e9:.3f} GB, {len(ckpt.digest(full)['tensors'])} tensors, "
        f"{threads} cores, torch {torch.__version__}; median of {args.repeats}"
    )
    for name, seconds in rows.items():
        print(f"  {name:42} {seconds:7.2f} s")
    for algorithm in ckpt.HASHES:
        for temp in ("warm", "cold"):
            extra = (
                rows[f"{algorithm}: load_checkpoint, {temp} (verified)"]
                - rows[f"torch.load, {temp} (no check)"]
            )
            read = rows[f"read the file once, {temp}"]
            print(
                f"  {algorithm}: verifying adds {extra:.2f} s to a {temp} load = {extra / read:.2f} {temp} reads"
            )


if __name__ == "__main__":
    main()
