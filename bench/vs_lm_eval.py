"""evaluate.py against lm-evaluation-harness on one HellaSwag-format task: each choice's
log-likelihood, and acc and acc_norm with their standard errors, side by side. With
--preprocess=lm-eval our acc and acc_norm_chars are the harness's acc and acc_norm.

    python3 -m venv /tmp/lmeval_venv --system-site-packages
    /tmp/lmeval_venv/bin/pip install lm-eval accelerate
    python bench/vs_lm_eval.py --lm_eval=/tmp/lmeval_venv/bin/lm-eval             # offline, a random model
    python bench/vs_lm_eval.py --lm_eval=/tmp/lmeval_venv/bin/lm-eval \\
        --checkpoint=checkpoints/<run> --task=data/hellaswag_val.jsonl --limit=500

Without --checkpoint it builds a random 2-layer model with GPT-2's vocabulary and a
60-example task of HellaSwag's shape (WikiHow markers included), so that it runs offline in
a minute or two on a CPU. A checkpoint of ours is exported first (export.py); a Hugging Face
folder is scored as it is. The harness runs its own `hellaswag` task's rules (its
process_docs, imported from lm_eval) on the local file, from a temporary folder: lm-eval
imports the `evaluate` package, which this repository's evaluate.py would shadow if the
repository's root came first on sys.path. Exit status 1 when a figure differs.
"""

import argparse
import glob
import json
import os
import random
import subprocess
import sys
import tempfile

import torch

import evaluate
import export
from model import GPT, GPTConfig
from storage.checkpoint import save_checkpoint
from storage.interop import is_hf_folder
from text.tokenizer import get_tokenizer

TASK_YAML = """# lm-evaluation-harness's hellaswag task (lm_eval/tasks/hellaswag/hellaswag.yaml) on a local file
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {path}
output_type: multiple_choice
validation_split: validation
test_split: null
process_docs: !function utils.process_docs
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "choices"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
WORDS = (
    "the a man woman person is are was then he she they it on in at to of and with his her their "
    "table room water car ball dog kitchen street field house door shows starts begins takes puts holds"
).split()
LOGLIK_ATOL = 1e-3  # float32 forwards of the same weights, batched differently


def random_model_and_task(folder: str) -> tuple:
    """A random GPT-2-vocab model's checkpoint, and a HellaSwag-format task of 60 examples."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, block_size=128, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():  # varied logits, so that choices differ by more than rounding
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
    ckpt = os.path.join(folder, "run", "best_model.pt")
    state = {"step": 0, "model": model.state_dict(), "model_config": vars(model.config)}
    save_checkpoint(dict(state, tokenizer=get_tokenizer("gpt2").meta()), ckpt)
    rng = random.Random(0)
    text = lambda lo, hi: " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))  # noqa: E731
    task = os.path.join(folder, "hellaswag_like.jsonl")
    with open(task, "w") as fh:
        for i in range(60):
            wiki = i % 3 == 0  # WikiHow's markers, which the harness rewrites
            ctx_a = f"[header] How to {text(2, 4)} [title] {text(4, 10)}." if wiki else text(5, 15) + "."
            ctx_b = "" if wiki and i % 2 else text(1, 3)
            endings = [
                f"[step] {text(3, 12)}.  {text(2, 6)}." if wiki else text(2, 14) + "." for _ in range(4)
            ]
            record = dict(activity_label=text(1, 3).title(), ctx_a=ctx_a, ctx_b=ctx_b, endings=endings)
            fh.write(json.dumps(dict(record, ctx=f"{ctx_a} {ctx_b}".strip(), label=rng.randrange(4))) + "\n")
    return ckpt, task


def run_lm_eval(lm_eval: str, folder: str, task: str, limit: int, device: str, work: str) -> tuple:
    """(the harness's results for the task, its per-choice log-likelihoods by example)."""
    tasks = os.path.join(work, "tasks")
    os.makedirs(tasks)
    with open(os.path.join(tasks, "utils.py"), "w") as fh:
        fh.write("from lm_eval.tasks.hellaswag.utils import process_docs  # noqa: F401\n")
    with open(os.path.join(tasks, "vs_ours.yaml"), "w") as fh:
        fh.write(TASK_YAML.format(name="vs_ours", path=os.path.abspath(task)))
    out = os.path.join(work, "lm_eval_out")
    cmd = [
        lm_eval,
        "--model=hf",
        f"--model_args=pretrained={os.path.abspath(folder)},dtype=float32",
        "--tasks=vs_ours",
        f"--include_path={tasks}",
        f"--device={device}",
        "--batch_size=16",
        f"--output_path={out}",
        "--log_samples",
        *([f"--limit={limit}"] if limit else []),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    print(" ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, cwd=work, env=env, check=True)  # not in the repository: `import evaluate`
    with open(glob.glob(os.path.join(out, "*", "results_*.json"))[0]) as fh:
        results = json.load(fh)["results"]["vs_ours"]
    with open(glob.glob(os.path.join(out, "*", "samples_vs_ours_*.jsonl"))[0]) as fh:
        samples = {s["doc_id"]: [float(r[0]) for r in s["filtered_resps"]] for s in map(json.loads, fh)}
    return results, samples


def compare(ours: dict, theirs: dict, samples: dict) -> list:
    """Lines of the side-by-side table; the last says whether everything agreed."""
    diff = max(abs(a - b) for e in ours["per_example"] for a, b in zip(e["logprobs"], samples[e["index"]]))
    rows = [
        ("acc", ours["acc"], ours["acc_stderr"], theirs["acc,none"], theirs["acc_stderr,none"]),
        (
            "acc_norm_chars / acc_norm",
            ours["acc_norm_chars"],
            ours["acc_norm_chars_stderr"],
            theirs["acc_norm,none"],
            theirs["acc_norm_stderr,none"],
        ),
    ]
    lines = ["| metric (ours / lm-eval) | ours | lm-eval |", "|---|---|---|"]
    lines += [f"| {m} | {a:.4f} ± {ae:.4f} | {b:.4f} ± {be:.4f} |" for m, a, ae, b, be in rows]
    agree = diff <= LOGLIK_ATOL and all(abs(a - b) < 1e-9 and abs(ae - be) < 1e-9 for _, a, ae, b, be in rows)
    lines.append(
        f"{len(ours['per_example'])} examples; largest difference of a choice's log-likelihood: {diff:.2e}; "
        + ("the figures agree" if agree else "THE FIGURES DIFFER")
    )
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lm_eval", required=True, help="the lm-eval command (lm-eval and accelerate installed)")
    p.add_argument("--checkpoint", default=None, help="what evaluate.py takes (default: a random tiny model)")
    p.add_argument("--task", default=None, help="a HellaSwag jsonl (default: 60 made-up examples)")
    p.add_argument("--limit", type=int, default=0, help="the first N examples (0: all)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if bool(args.checkpoint) != bool(args.task):
        p.error("give --checkpoint and --task together, or neither (a random model on made-up examples)")
    with tempfile.TemporaryDirectory(prefix="vs_lm_eval_") as work:
        ckpt, task = (args.checkpoint, args.task) if args.checkpoint else random_model_and_task(work)
        folder = ckpt if is_hf_folder(ckpt) else os.path.join(work, "export")
        if folder != ckpt:
            export.main([f"--checkpoint={ckpt}", f"--out={folder}"])
        ours = evaluate.main(
            [
                f"--checkpoint={ckpt}",
                f"--task=vs_ours:{task}",
                "--preprocess=lm-eval",
                "--per_example",
                f"--device={args.device}",
                "--dtype=float32",
                f"--out={os.path.join(work, 'ours.json')}",
                *([f"--limit={args.limit}"] if args.limit else []),
            ]
        )["tasks"]["vs_ours"]
        theirs, samples = run_lm_eval(args.lm_eval, folder, task, args.limit, args.device, work)
    lines = compare(ours, theirs, samples)
    print("\n".join(lines))
    return 0 if lines[-1].endswith("agree") else 1


if __name__ == "__main__":
    sys.exit(main())
