"""Score a checkpoint on multiple-choice tasks (HellaSwag, or any jsonl of context, choices
and label), completion style, as llm.c and build-nanogpt do.

    python evaluate.py --checkpoint=checkpoints/<run> --task=data/hellaswag_val.jsonl
    python evaluate.py --checkpoint=path/to/gpt2_folder --task=hellaswag:data/hellaswag_val.jsonl --subset=1000
    python evaluate.py --checkpoint=nanoGPT/out/ckpt.pt --task=mytask:tasks/mine.jsonl --limit=200 --out=mine.json

--checkpoint takes what sample.py takes: a checkpoint file or run folder of ours, a Hugging
Face GPT-2, Llama or Qwen2 folder, a nanoGPT ckpt.pt. Each --task is PATH or NAME:PATH (the name defaults to
the file's stem); every line of every file is checked before the checkpoint loads. --limit=N
scores the first N examples, --subset=N a fixed N spread over the file (the same ones every
time, and the ones train.py scores with eval_task_examples=N). --preprocess=lm-eval rewrites
HellaSwag's text as lm-evaluation-harness does. A GPU computes in bf16 autocast (--dtype).

Prints a table and writes --out (JSON): each task's acc, acc_norm_tokens (llm.c's acc_norm)
and acc_norm_chars (lm-evaluation-harness's acc_norm), each with its standard error
(METRIC_stderr), the examples cut to the model's context (a warning names them too), and the
speed; --per_example adds every example's scores. What each metric compares with:
evaluation/scoring.py and docs/evaluation.md.
"""

import argparse
import os
import re
import sys
import time

import torch

from errors import run_cli
from evaluation import scoring
from parallel.devices import DTYPES, autocast, dtype_name, pick_device, pick_dtype
from storage.atomic_files import write_json
from storage.weights import build_model, check_tokenizer, find_and_load, tokenizer_meta
from text import multiple_choice as mc
from text.tokenizer import load_tokenizer


def task_spec(value: str) -> tuple:
    """(name, path) from NAME:PATH or PATH (named after the file's stem)."""
    name, sep, path = value.partition(":")
    if sep and scoring.TASK_NAME.fullmatch(name) and path:
        return name, path
    stem = os.path.splitext(os.path.basename(value))[0]
    return re.sub(r"\W", "_", stem) or "task", value


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Score a checkpoint on multiple-choice tasks (HellaSwag and the like).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint file or run folder, a Hugging Face GPT-2, Llama or Qwen2 folder, or a nanoGPT ckpt.pt "
        "(default: best of the newest run in checkpoints/)",
    )
    p.add_argument(
        "--task",
        action="append",
        required=True,
        type=task_spec,
        metavar="[NAME:]PATH",
        help="a jsonl task file: HellaSwag's (ctx, endings, label) or (context, choices, label); repeatable",
    )
    p.add_argument(
        "--limit", type=int, default=0, help="score only the first N examples of each task (0: all)"
    )
    p.add_argument(
        "--subset",
        type=int,
        default=0,
        help="score a fixed subset of N examples spread over each file (0: all)",
    )
    p.add_argument(
        "--batch_tokens",
        type=int,
        default=scoring.BATCH_TOKENS,
        help="tokens per forward (rows x longest row); lower it if memory runs out",
    )
    p.add_argument(
        "--preprocess",
        default="none",
        choices=mc.PREPROCESS,
        help="none: the text as the file has it (llm.c); lm-eval: HellaSwag's rewritten as "
        "lm-evaluation-harness's hellaswag task does (activity_label: ctx_a Ctx_b, [markers] removed)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--dtype", default="auto", choices=DTYPES, help="auto: bf16 autocast on a GPU, fp32 on a CPU"
    )
    p.add_argument(
        "--out", default="evaluation.json", help="the JSON results file (written whole or not at all)"
    )
    p.add_argument(
        "--per_example", action="store_true", help="add each example's log-likelihoods to the JSON"
    )
    p.add_argument("--out_dir", default="checkpoints", help="where to look for runs without --checkpoint")
    args = p.parse_args(argv)
    if args.limit < 0 or args.subset < 0:
        p.error("--limit and --subset must be >= 0 (0: every example)")
    if args.limit and args.subset:
        p.error("give --limit (the first N examples) or --subset (N spread over the file), not both")
    if args.batch_tokens < 1:
        p.error(f"--batch_tokens must be >= 1, got {args.batch_tokens}")
    names = [name for name, _ in args.task]
    if len(set(names)) < len(names):
        p.error(
            f"two tasks are named {next(n for n in names if names.count(n) > 1)!r}; name them: --task=NAME:PATH"
        )
    return args


def selection(args, total: int) -> str:
    if args.limit:
        return f"the first {min(args.limit, total):,}"
    if args.subset and args.subset < total:
        return f"a fixed subset of {args.subset:,} (seed {mc.SUBSET_SEED})"
    return "all"


def run_task(model, name: str, examples: list, args, tok, device, ctx) -> dict:
    """One task's results: encode the chosen examples, warn about those cut to the model's
    context, score them, time it."""
    start = time.perf_counter()
    block_size = model.config.block_size
    task = mc.encode_task(name, "", examples, tok, block_size, args.limit, args.subset)
    encode_s = time.perf_counter() - start
    if warning := mc.truncation_warning(task, block_size):
        print(warning + " (which: --per_example)", file=sys.stderr)
    start = time.perf_counter()
    scored = scoring.score_examples(model, task.examples, device, ctx, args.batch_tokens)
    seconds = time.perf_counter() - start
    result = dict(
        scoring.accuracy(scored),
        truncated=task.truncated,
        of=len(examples),
        selection=selection(args, len(examples)),
        seconds=seconds,
        examples_per_s=len(scored) / seconds if seconds else None,
        encode_s=encode_s,
    )
    if args.per_example:
        result["per_example"] = [
            dict(
                index=s.index,
                label=s.label,
                pred=s.pred,
                pred_norm_tokens=s.pred_norm_tokens,
                pred_norm_chars=s.pred_norm_chars,
                logprobs=list(s.logprobs),
                tokens=list(s.tokens),
                chars=list(s.chars),
                truncated=s.truncated,
            )
            for s in scored
        ]
    return result


def with_stderr(r: dict, metric: str) -> str:
    err = r[metric + scoring.STDERR]
    return f"{r[metric]:.4f}" + (f" ± {err:.4f}" if err is not None else "")


def table(results: dict) -> str:
    """One row per task: each accuracy ± its standard error."""
    lines = [
        "| task | examples | acc | acc_norm_tokens (llm.c) | acc_norm_chars (lm-eval) | cut to context "
        "| seconds | examples/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        speed = f"{r['examples_per_s']:,.1f}" if r["examples_per_s"] else "-"
        lines.append(
            f"| {name} | {r['examples']:,} of {r['of']:,} | "
            + " | ".join(with_stderr(r, m) for m in scoring.METRICS)
            + f" | {r['truncated']:,} | {r['seconds']:.1f} | {speed} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Print the table, write --out; return what was written."""
    args = parse_args(argv)
    # bad files fail before the load
    tasks = {name: mc.read_task(path, args.preprocess) for name, path in args.task}
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    path, ckpt = find_and_load(args.checkpoint, args.out_dir)
    tok = load_tokenizer(tokenizer_meta(ckpt))
    model = build_model(ckpt, device)
    check_tokenizer(model.config, tok)
    # the head runs in chunks of choice tokens, as in an eager training run (a compiled run saves 0)
    step = ckpt.get("step")
    del ckpt  # the optimizer state can be as large as the model again
    print(
        f"evaluating {path} (step {step}), {model.num_params() / 1e6:.2f}M params, {tok.name} tokenizer, "
        f"{device}, {dtype_name(dtype)}",
        file=sys.stderr,
    )
    results = {
        name: dict(
            path=task_path, **run_task(model, name, tasks[name], args, tok, device, autocast(device, dtype))
        )
        for name, task_path in args.task
    }
    out = dict(
        checkpoint=path,
        step=step,
        params=model.num_params(),
        tokenizer=tok.name,
        device=str(device),
        dtype=dtype_name(dtype),
        torch=torch.__version__,
        batch_tokens=args.batch_tokens,
        preprocess=args.preprocess,
        scoring="completion style: context tokens, then the tokens of ' ' + choice, encoded apart; "
        "acc: highest summed log-likelihood; acc_norm_tokens: highest per token (llm.c's acc_norm); "
        "acc_norm_chars: highest per character of the choice (lm-evaluation-harness's acc_norm); "
        "METRIC_stderr: sqrt(p (1 - p) / (n - 1)), lm-evaluation-harness's mean_stderr",
        tasks=results,
    )
    print(table(results))
    write_json(args.out, out)
    print(f"wrote {args.out}", file=sys.stderr)
    return out


if __name__ == "__main__":
    run_cli(main)
