"""Launch a short 2-rank gloo training run many times in a row; count the launches that
do not end cleanly. Run by hand (not a test: 50 launches take minutes):

    python bench/repeat_launches.py --launches=50
    python bench/repeat_launches.py --launches=20 --restart   # each launch: a rank dies once, torchrun restarts

A clean launch exits 0 and prints neither "terminate called" (a C++ thread aborting the
process at exit) nor a traceback. With --restart, rank 1 dies at step 3 of every launch
and `torchrun --max_restarts=1 ... --resume=auto` must bring the run to its end.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from storage.atomic_files import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_dataset(folder: str) -> str:
    rng = np.random.default_rng(0)
    os.makedirs(folder)
    for split, n in (("train", 20_000), ("val", 2_000)):
        rng.integers(0, 64, n, dtype=np.uint16).tofile(os.path.join(folder, f"{split}.bin"))
    write_json(
        os.path.join(folder, "meta.json"),
        {
            "tokenizer": "char",
            "chars": "".join(chr(48 + i) for i in range(63)),
            "vocab_size": 64,
            "dtype": "uint16",
            "eot_id": 63,
        },
    )
    return folder


def launch(data: str, out: str, restart: bool) -> tuple[int, str, float]:
    args = [
        f"--data_dir={data}",
        f"--out_dir={out}",
        "--run_name=r",
        "--model=tiny",
        "--n_layer=2",
        "--n_head=2",
        "--n_embd=32",
        "--block_size=16",
        "--global_batch_size=8",
        "--micro_batch_size=2",
        "--max_steps=6",
        "--warmup_steps=2",
        "--eval_interval=3",
        "--eval_batches=2",
        "--log_interval=1",
        "--save_interval=2",
        "--device=cpu",
        "--dtype=float32",
        "--compile=False",
        "--tensorboard=False",
        "--progress_bar=False",
        "--dropout=0.1",
        "--resume=auto",
    ]
    script = os.path.join(ROOT, "tests", "run_with_faults.py") if restart else os.path.join(ROOT, "train.py")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *(["--max_restarts=1"] if restart else []),
        script,
        *args,
    ]
    env = dict(
        os.environ, OMP_NUM_THREADS="1", FAULT=f"die_once:1:3:{os.path.join(out, 'died')}" if restart else ""
    )
    t = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr, time.time() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--launches", type=int, default=50)
    p.add_argument("--restart", action="store_true", help="a rank dies once per launch; torchrun restarts it")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = tiny_dataset(os.path.join(tmp, "data"))
        bad, times = [], []
        for i in range(1, a.launches + 1):
            out = os.path.join(tmp, f"ck{i}")
            code, text, seconds = launch(data, out, a.restart)
            times.append(seconds)
            clean = code == 0 and "terminate called" not in text and "Traceback" not in text
            ended = os.path.exists(os.path.join(out, "r", "checkpoint_step_6.pt"))
            if not (clean and ended):
                bad.append(i)
                print(f"launch {i}: exit {code}\n" + text[-2000:], flush=True)
            print(
                f"launch {i}/{a.launches}: {'clean' if clean and ended else 'FAILED'} in {seconds:.1f} s",
                flush=True,
            )
    print(
        f"\n{a.launches - len(bad)} of {a.launches} launches clean"
        + (f"; failed: {bad}" if bad else "")
        + f"; median {np.median(times):.1f} s per launch"
    )
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
