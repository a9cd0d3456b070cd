"""Run a Python script (train.py) as on a smaller GPU: this process's CUDA caching allocator
may hold at most --gib of the card (torch.cuda.set_per_process_memory_fraction), so a run
that needs more fails with an out-of-memory error where that card would.

    python bench/emulate_card.py --gib=16 train.py config/gpt2_1b_16gb.py --max_steps=20

The cap counts what PyTorch allocates, not the CUDA context (a few hundred MiB on a real
card): the emulated card is a little larger than the real one. Without a GPU the script
runs uncapped (bench/gpu_suite.py's CPU smoke runs its plumbing).
"""

import os
import runpy
import sys

import torch

GiB = 1024**3


def main(argv: list[str]):
    if len(argv) < 2 or not argv[0].startswith("--gib="):
        sys.exit("usage: python bench/emulate_card.py --gib=N SCRIPT.py [ARGS ...]")
    gib = float(argv[0].split("=", 1)[1])
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, gib * GiB / total), 0)
        print(f"{torch.cuda.get_device_name(0)}: emulating a {gib:g} GiB card", flush=True)
    else:
        print(f"no GPU: running uncapped (a {gib:g} GiB card is emulated only on a GPU)", flush=True)
    script = argv[1]
    sys.argv = [script, *argv[2:]]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python SCRIPT` would
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
