"""Our loop against nanoGPT's on nanoGPT's own CPU recipe (4 x 128, context 64, batch 12,
2,000 steps), both on the same tokens: this writes our prepared char data into a nanoGPT
checkout as data/ours_char (its train.bin, val.bin and meta.pkl), then prints the two
commands to time side by side.

    python prepare_data.py --tokenizer=char --name=shakespeare_char    # as `make demo` does
    python bench/vs_nanogpt.py --nanogpt=PATH/TO/nanoGPT

The settings are nanoGPT's config/train_shakespeare_char.py at that size, spelled in both
programs: learning rate 1e-3 decaying to 1e-4 over 2,000 steps after 100 of warmup,
dropout 0, no biases, evaluation every 250 steps on 20 batches, a log line every step.
"""

import argparse
import json
import os
import pickle
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OURS = (
    "python train.py config/shakespeare_cpu.py --run_name=vs_nanogpt --out_dir=/tmp/vs_nanogpt "
    "--global_batch_size=12 --micro_batch_size=12 --max_steps=2000 --learning_rate=1e-3 --min_lr=1e-4 "
    "--warmup_steps=100 --eval_interval=250 --eval_batches=20 --log_interval=1 --save_interval=2000 "
    "--tensorboard=False --progress_bar=False --bias=False"
)
THEIRS = (
    "python train.py config/train_shakespeare_char.py --dataset=ours_char --device=cpu --compile=False "
    "--eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 "
    "--n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0 --out_dir=/tmp/vs_nanogpt_theirs"
)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nanogpt", required=True, help="a checkout of github.com/karpathy/nanoGPT")
    p.add_argument("--data_dir", default=os.path.join(ROOT, "data", "shakespeare_char"))
    args = p.parse_args(argv)
    if not os.path.exists(os.path.join(args.nanogpt, "config", "train_shakespeare_char.py")):
        sys.exit(f"error: {args.nanogpt!r} is not a nanoGPT checkout (no config/train_shakespeare_char.py)")
    meta_path = os.path.join(args.data_dir, "meta.json")
    if not os.path.exists(meta_path):
        sys.exit(
            f"error: no {meta_path}; run `python prepare_data.py --tokenizer=char --name=shakespeare_char`"
        )
    with open(meta_path) as fh:
        meta = json.load(fh)
    if meta.get("tokenizer") != "char" or meta.get("dtype") != "uint16":
        sys.exit(
            f"error: {args.data_dir} holds {meta.get('tokenizer')} tokens as {meta.get('dtype')}; "
            f"nanoGPT's char recipe reads uint16 char ids"
        )
    out = os.path.join(args.nanogpt, "data", "ours_char")
    os.makedirs(out, exist_ok=True)
    for split in ("train", "val"):  # the same uint16 layout: the files copy as they are
        shutil.copyfile(os.path.join(args.data_dir, f"{split}.bin"), os.path.join(out, f"{split}.bin"))
    chars = meta["chars"]
    with open(os.path.join(out, "meta.pkl"), "wb") as fh:
        pickle.dump(
            {
                "vocab_size": meta["vocab_size"],
                "itos": dict(enumerate(chars)),
                "stoi": {c: i for i, c in enumerate(chars)},
            },
            fh,
        )
    print(
        f"wrote {out}\nours (in {ROOT}):\n  {OURS}\nnanoGPT (in {os.path.abspath(args.nanogpt)}):\n  {THEIRS}"
    )


if __name__ == "__main__":
    main()
