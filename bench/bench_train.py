"""Training throughput: tokens/s, MFU and peak memory of a preset over a few hundred steps.

Run by hand on the machine you want to measure (not a test):
    python bench/bench_train.py --model=gpt2-124m --dtype=bfloat16 --compile=True --steps=300
    python bench/bench_train.py --model=gpt2-124m --dtype=float16 --compile=True --steps=300
    python bench/bench_train.py --model=tiny --device=cpu --steps=50 --micro_batch_size=8
Trains on random GPT-2 token ids in a temp folder (throughput does not depend on the text)
and prints the mean over the logged steps after the first (which includes compilation).
Any other --key=value is passed to train.py.
"""

import json
import os
import sys
import tempfile

import numpy as np

import train


def write_random_tokens(folder: str, n_tokens: int = 20_000_000) -> str:
    """A dataset of uniformly random GPT-2 token ids in folder (train.bin, val.bin, meta.json):
    what a throughput measurement trains on, since speed does not depend on the text."""
    os.makedirs(folder, exist_ok=True)
    ids = np.random.default_rng(0).integers(0, 50257, size=n_tokens, dtype=np.uint16)
    ids.tofile(os.path.join(folder, "train.bin"))
    ids[:1_000_000].tofile(os.path.join(folder, "val.bin"))
    with open(os.path.join(folder, "meta.json"), "w") as fh:
        json.dump({"tokenizer": "gpt2", "vocab_size": 50257, "dtype": "uint16", "eot_id": 50256}, fh)
    return folder


def main(argv):
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    steps = int(opts.pop("steps", 300))
    with tempfile.TemporaryDirectory() as tmp:
        data = write_random_tokens(os.path.join(tmp, "data"))
        args = {
            "data_dir": data,
            "out_dir": tmp,
            "run_name": "bench",
            "model": "gpt2-124m",
            "max_steps": steps,
            "warmup_steps": 10,
            "micro_batch_size": 12,
            "log_interval": 10,
            "eval_interval": 10**9,
            "eval_batches": 0,
            "save_interval": 0,
            "tensorboard": False,
            "progress_bar": False,
            **opts,
        }
        args.setdefault("global_batch_size", args["micro_batch_size"])
        train.main([f"--{k}={v}" for k, v in args.items()])
        with open(os.path.join(tmp, "bench", "metrics.jsonl")) as fh:
            recs = [r for r in map(json.loads, fh) if r["kind"] == "train"][2:-1]
        start = next(
            r
            for r in map(json.loads, open(os.path.join(tmp, "bench", "metrics.jsonl")))
            if r["kind"] == "start"
        )
    tok = np.mean([r["tokens_per_s"] for r in recs])
    mfu = [r["mfu"] for r in recs if r["mfu"] is not None]
    print(
        f"\n{args['model']} | {start['device']} | {start['dtype']} | compile {args.get('compile', 'auto')} | "
        f"micro-batch {args['micro_batch_size']} x {start['model_config']['block_size']} tokens"
    )
    print(
        f"tokens/s {tok:,.0f} | MFU "
        + (f"{np.mean(mfu):.1%}" if mfu else "n/a")
        + f" | peak memory {max(r['peak_mem_gib'] for r in recs):.2f} GiB | over {len(recs)} log intervals"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
