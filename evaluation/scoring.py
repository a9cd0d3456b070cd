"""Scoring a model on multiple-choice tasks (text/multiple_choice.py reads and encodes them):
the batched forwards, split over the ranks, and the accuracies with their standard errors.
evaluate.py scores a checkpoint; train.py scores a fixed subset at every evaluation.

Each choice's score is the model's log-likelihood of its tokens, each given everything
before it, summed. Three accuracies, named so that none is taken for another:
- acc: the choice of highest summed log-likelihood is the label. The same rule as llm.c's
  and lm-evaluation-harness's acc.
- acc_norm_tokens: the sum divided by the choice's token count first, as llm.c's
  dev/data/hellaswag.py and build-nanogpt's hellaswag.py do; their "acc_norm".
- acc_norm_chars: the sum divided by the choice's length in characters first, as
  lm-evaluation-harness does (lm_eval/api/task.py, completion_len); its "acc_norm".
Each has a standard error, the harness's mean_stderr of the 0/1 outcomes: the sample
standard deviation over sqrt(n), sqrt(p (1 - p) / (n - 1)). Which published figures each
is comparable with: docs/evaluation.md.
"""

import contextlib
import dataclasses
import math
import re

import numpy as np
import torch

from parallel.distributed import Dist, all_reduce_sum

METRICS = ("acc", "acc_norm_tokens", "acc_norm_chars")
LEGACY_METRICS = {"acc_norm": "acc_norm_tokens"}  # older runs' metrics.jsonl named it acc_norm
BATCH_TOKENS = 16_384  # rows x longest row per forward, standalone (train.py: a micro-batch's tokens)
# a task's name: its metrics are NAME_acc, NAME_acc_norm_tokens, ...
TASK_NAME = re.compile(r"[A-Za-z][\w-]*")
STDERR = "_stderr"  # NAME_acc_stderr: the standard error of NAME_acc

# GPT-2's published checkpoints, HellaSwag's 10,042 validation examples, acc_norm_tokens (completion
# style, the text as the file has it), all four from one source: llm.c's dev/vislog.ipynb
# (hella2_baseline). llm.c's dev/data/hellaswag.py gives 0.2955 for the 124M and 0.4893 for the 1.5B.
GPT2_HELLASWAG_ACC_NORM_TOKENS = {"124M": 0.2945, "350M": 0.3752, "774M": 0.4320, "1.5B": 0.4889}
GPT2_HELLASWAG_SOURCE = "llm.c dev/vislog.ipynb"


def metric_key(task: str, metric: str) -> str:
    """The name a task's metric has in metrics.jsonl, TensorBoard and the report:
    hellaswag_acc_norm_tokens."""
    return f"{task}_{metric}"


def split_metric_key(key: str) -> tuple | None:
    """(task, metric) of a name metric_key made, else None (a _stderr key too). An older
    run's TASK_acc_norm reads as TASK's acc_norm_tokens, which it was."""
    for metric in sorted([*METRICS, *LEGACY_METRICS], key=len, reverse=True):  # acc_norm_* before acc
        task = key.removesuffix(f"_{metric}")
        if task != key and TASK_NAME.fullmatch(task):
            return task, LEGACY_METRICS.get(metric, metric)
    return None


def metric_order(key: str) -> tuple:
    """Sorts a metric_key name: by task, then as METRICS lists them."""
    task, metric = split_metric_key(key)
    return task, METRICS.index(metric)


def unknown_metric_hint(name: str) -> str:
    """A sentence for an early_stopping_metric that names the old acc_norm, else ""."""
    if name.endswith("_acc_norm"):
        return (
            f"; {name} is now {name}_tokens (normalised per token, as llm.c) or {name}_chars "
            f"(per character, as lm-evaluation-harness)"
        )
    return ""


@dataclasses.dataclass(frozen=True)
class Scored:
    """One example's result: each choice's summed log-likelihood, token and character count."""

    index: int
    label: int
    logprobs: tuple
    tokens: tuple
    chars: tuple
    truncated: bool = False

    @property
    def pred(self) -> int:
        return int(np.argmax(self.logprobs))  # the first of equals, as build-nanogpt's argmin of losses

    @property
    def pred_norm_tokens(self) -> int:
        return int(np.argmax(np.asarray(self.logprobs) / np.asarray(self.tokens)))

    @property
    def pred_norm_chars(self) -> int:
        return int(np.argmax(np.asarray(self.logprobs) / np.asarray(self.chars, dtype=np.float64)))

    def preds(self) -> dict:
        """{metric: the chosen index}."""
        return dict(acc=self.pred, acc_norm_tokens=self.pred_norm_tokens, acc_norm_chars=self.pred_norm_chars)


# ---- batches and forwards -------------------------------------------------------------------


def plan_batches(examples: list, max_tokens: int) -> list:
    """Examples grouped into forwards, all choices of an example in the same one: sorted by
    length (little padding), each batch's rows x longest row at most max_tokens (one example
    always fits). A pure function of the examples, so every world size makes the same
    batches and each example gets the same numbers."""
    longest = [max(len(r) for r in e.rows) - 1 for e in examples]
    batches, rows = [], 0
    for i in sorted(range(len(examples)), key=lambda i: (longest[i], i)):
        n = len(examples[i].rows)
        if batches and (rows + n) * longest[i] <= max_tokens:
            batches[-1].append(i)
            rows += n
        else:
            batches.append([i])
            rows = n
    return batches


def batch_tensors(examples: list, device) -> tuple:
    """(inputs, targets) of every row of the examples, padded on the right; targets are -1
    except at the choices' tokens. Causal attention keeps the padding out of the real tokens."""
    rows = [(r, s) for e in examples for r, s in zip(e.rows, e.scored)]
    width = max(len(r) for r, _ in rows) - 1
    idx = np.zeros((len(rows), width), dtype=np.int64)
    targets = np.full((len(rows), width), -1, dtype=np.int64)
    for k, (row, scored) in enumerate(rows):
        n = len(row) - 1
        idx[k, :n] = row[:-1]
        targets[k, n - scored : n] = row[n + 1 - scored :]
    return torch.from_numpy(idx).to(device), torch.from_numpy(targets).to(device)


@torch.no_grad()
def score_batch(model, examples: list, device, autocast_ctx) -> list:
    idx, targets = batch_tensors(examples, device)
    with autocast_ctx:
        losses = model.position_losses(idx, targets)
    logprobs = (-losses.sum(dim=1)).double().cpu().tolist()  # one copy to the host per batch
    out, k = [], 0
    for e in examples:
        out.append(
            Scored(e.index, e.label, tuple(logprobs[k : k + len(e.rows)]), e.scored, e.chars, e.truncated)
        )
        k += len(e.rows)
    return out


@torch.no_grad()
def score_examples(
    model,
    examples: list,
    device,
    autocast_ctx=None,
    max_tokens: int = BATCH_TOKENS,
    rank: int = 0,
    world: int = 1,
) -> list:
    """This rank's share of the examples, scored (Scored, in file order): the batches of
    plan_batches, rank r taking batches r, r + world, ... Every rank runs the same number of
    forwards, because FSDP gathers parameters in each: a rank left without a batch runs a
    one-token forward whose result is dropped. The model is in eval mode meanwhile."""
    autocast_ctx = autocast_ctx or contextlib.nullcontext()
    batches = plan_batches(examples, max_tokens)
    was_training = model.training
    model.eval()
    out = []
    try:
        for k in range(math.ceil(len(batches) / world)):
            b = k * world + rank
            if b < len(batches):
                out += score_batch(model, [examples[i] for i in batches[b]], device, autocast_ctx)
            else:
                blank = torch.zeros((1, 1), dtype=torch.long, device=device)
                with autocast_ctx:
                    model.position_losses(blank, blank - 1)
    finally:
        model.train(was_training)
    return sorted(out, key=lambda s: s.index)


def stderr(p: float, n: int) -> float | None:
    """The standard error of an accuracy p over n examples, as lm-evaluation-harness's
    mean_stderr (sample standard deviation / sqrt(n)); None for fewer than 2 examples."""
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None


def accuracy(scored: list, env: Dist | None = None) -> dict:
    """Each metric, its standard error (METRIC_stderr) and the number of examples, the
    counts summed over the ranks: the same figures whatever the world size."""
    counts = torch.tensor(
        [sum(s.preds()[m] == s.label for s in scored) for m in METRICS] + [len(scored)],
        dtype=torch.long,
        device=env.device if env else "cpu",
    )
    *right, n = all_reduce_sum(counts, env or Dist()).tolist()
    out = {}
    for metric, r in zip(METRICS, right):
        out[metric] = r / max(n, 1)
        out[metric + STDERR] = stderr(out[metric], n)
    return dict(out, examples=n)


def score_tasks(model, tasks: list, env: Dist, autocast_ctx, max_tokens: int) -> dict:
    """Every task scored across the ranks, as eval-record fields: {hellaswag_acc: ..,
    hellaswag_acc_stderr: .., hellaswag_acc_norm_tokens: .., ...}. Every rank must call it
    (it all-reduces)."""
    fields = {}
    for task in tasks:
        scored = score_examples(
            model, task.examples, env.device, autocast_ctx, max_tokens, env.rank, env.world
        )
        result = accuracy(scored, env)
        for m in METRICS:
            fields[metric_key(task.name, m)] = result[m]
            fields[metric_key(task.name, m) + STDERR] = result[m + STDERR]
    return fields
