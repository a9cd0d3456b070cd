"""Multiple-choice scoring speed: examples per second, from reading the file to the last score.

    python bench/bench_evaluate.py                                          # small-cpu shape, 500 examples
    python bench/bench_evaluate.py --preset=gpt2-124m --examples=10042 --device=cuda   # HellaSwag's size
    python bench/bench_evaluate.py --preset=gpt2-124m --task=data/hellaswag_val.jsonl --device=cuda

Random weights: the work per example does not depend on what was learned. Without --task
the examples are synthetic, in HellaSwag's format: 4 endings, a context of 15 to 100 words
and endings of 5 to 50 words (uniform, fixed seed), drawn from a list of common English
words (about one GPT-2 token each). Timed: reading, tokenizing and scoring (evaluate.py's
work after the model is loaded), on the device's first use included; dtype auto is bf16
autocast on a GPU. --json writes the figures (bench/gpu_suite.py reads them).
"""

import argparse
import json
import os
import random
import tempfile
import time

import torch

from evaluation import scoring
from model import GPT, PRESETS, GPTConfig
from parallel.devices import DTYPES, autocast, dtype_name, pick_device, pick_dtype
from storage.atomic_files import write_json
from text import multiple_choice as mc
from text.tokenizer import get_tokenizer

WORDS = (
    "the a man woman person is are was then he she they it on in at to of and with his her their "
    "table room water car ball dog kitchen street field house door window hand head camera video "
    "shows starts begins continues takes puts holds walks runs talks looks sits stands moves plays "
    "uses makes cuts pours turns opens closes picks throws jumps rides climbs cleans paints washes "
    "quickly slowly again back down up off out around into onto over under while after before "
    "small large red blue green white black old new first next last other several many some"
).split()


def write_synthetic(path: str, n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    text = lambda lo, hi: " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))  # noqa: E731
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(
                json.dumps(
                    {
                        "ind": i,
                        "ctx": text(15, 100).capitalize(),
                        "endings": [text(5, 50) + "." for _ in range(4)],
                        "label": rng.randrange(4),
                    }
                )
                + "\n"
            )
    return path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--preset", default="small-cpu", choices=sorted(PRESETS), help="model shape (GPT-2 vocabulary)"
    )
    p.add_argument("--n_layer", type=int, default=None, help="override the preset's (a tiny smoke model)")
    p.add_argument("--n_embd", type=int, default=None)
    p.add_argument("--n_head", type=int, default=None)
    p.add_argument("--task", default=None, help="a task file (default: synthetic HellaSwag-format examples)")
    p.add_argument(
        "--examples", type=int, default=500, help="synthetic examples, or the first N of --task (0: all)"
    )
    p.add_argument("--batch_tokens", type=int, default=scoring.BATCH_TOKENS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=DTYPES)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    shape = {
        **PRESETS[args.preset],
        **{k: v for k in ("n_layer", "n_embd", "n_head") if (v := getattr(args, k)) is not None},
    }
    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape)).to(device).eval()  # scoring chunks by model.LOSS_CHUNK
    tok = get_tokenizer("gpt2")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.task or write_synthetic(os.path.join(tmp, "synthetic.jsonl"), args.examples)
        start = time.perf_counter()
        task = mc.load_task(
            "bench", path, tok, model.config.block_size, limit=args.examples if args.task else 0
        )
        encoded_s = time.perf_counter() - start
        scored = scoring.score_examples(
            model, task.examples, device, autocast(device, dtype), args.batch_tokens
        )
        seconds = time.perf_counter() - start
    tokens = sum(len(r) - 1 for e in task.examples for r in e.rows)
    out = dict(
        preset=args.preset,
        shape=shape,
        params=model.num_params(),
        device=str(device),
        device_name=(
            torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
        ),
        threads=torch.get_num_threads(),
        dtype=dtype_name(dtype),
        torch=torch.__version__,
        task=args.task or "synthetic",
        examples=len(scored),
        rows_tokens=tokens,
        seconds=seconds,
        encode_seconds=encoded_s,
        examples_per_s=len(scored) / seconds,
        batch_tokens=args.batch_tokens,
    )
    print(
        f"{args.preset} {shape} ({out['params'] / 1e6:.1f}M params), {out['device_name']}, {out['dtype']}, "
        f"{out['threads']} threads: {len(scored):,} examples ({tokens:,} row tokens) in {seconds:.2f} s "
        f"(tokenizing {encoded_s:.2f} s): {out['examples_per_s']:,.1f} examples/s"
    )
    if args.json:
        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
