"""Multiple-choice tasks scored by a language model, completion style: HellaSwag's jsonl and
any jsonl of {"context", "choices", "label"}. evaluate.py scores a checkpoint with them;
train.py scores a fixed subset at every evaluation, split over the ranks.

How a choice is scored, as llm.c and build-nanogpt score HellaSwag (GPT-2 124M: acc_norm
0.2955 on the 10,042 validation examples): the context's tokens, then the tokens of
" " + choice, encoded apart and concatenated. The model's log-likelihood of the choice's
tokens, each given everything before it, is summed: acc counts the examples whose highest
sum is the label's; acc_norm divides each sum by the choice's token count first.
Where lm-evaluation-harness's `hellaswag` differs (its GPT-2 124M figures, acc 0.2892 and
acc_norm 0.3114 as build-nanogpt's hellaswag.py quotes them, are not comparable with these):
- it rewrites the text: the context becomes activity_label + ": " + ctx_a + " " +
  ctx_b.capitalize(), and WikiHow's "[title]"-style markers and double spaces are removed
  from context and endings; here "ctx" and "endings" are scored as the file has them;
- its acc_norm divides by the choice's length in characters, not in tokens;
- it encodes context + choice as one string and splits the ids at the context's length,
  so a token may straddle the boundary; here each is encoded on its own.
A row longer than the model's context loses its oldest context tokens (the choice is kept
whole while it fits); an empty context is the end-of-text token, so that the choice's first
token is predicted from something, as the harness does.
"""

import contextlib
import dataclasses
import json
import math
import os
import re

import numpy as np
import torch

from parallel.distributed import Dist, all_reduce_sum

FORMATS = {"hellaswag": ("ctx", "endings"), "generic": ("context", "choices")}  # (context key, choices key)
METRICS = ("acc", "acc_norm")
SUBSET_SEED = 0  # which examples a fixed subset holds; changing it changes every subset's scores
BATCH_TOKENS = 16_384  # rows x longest row per forward, standalone (train.py: a micro-batch's tokens)
HELLASWAG_SOURCE = "data/hellaswag_val.jsonl of github.com/rowanz/hellaswag"
TASK_NAME = re.compile(r"[A-Za-z][\w-]*")  # a task's name: its metrics are NAME_acc and NAME_acc_norm


# GPT-2's published checkpoints on HellaSwag's 10,042 validation examples, scored as here (llm.c)
GPT2_HELLASWAG_ACC_NORM = {"124M": 0.2955, "350M": 0.375, "774M": 0.432, "1.5B": 0.489}


def metric_key(task: str, metric: str) -> str:
    """The name a task's metric has in metrics.jsonl, TensorBoard and the report: hellaswag_acc_norm."""
    return f"{task}_{metric}"


def split_metric_key(key: str) -> tuple | None:
    """(task, metric) of a name metric_key made, else None."""
    for metric in sorted(METRICS, key=len, reverse=True):  # acc_norm before acc
        task = key.removesuffix(f"_{metric}")
        if task != key and TASK_NAME.fullmatch(task):
            return task, metric
    return None


@dataclasses.dataclass(frozen=True)
class Example:
    context: str
    choices: tuple
    label: int
    where: str  # file:line, for messages


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One example as token rows: row k is the window of context + choice k (at most
    block_size + 1 tokens: the inputs and the last target), whose last scored[k] tokens
    are the choice's."""

    index: int  # the example's place in its file (0-based)
    label: int
    rows: tuple
    scored: tuple


@dataclasses.dataclass(frozen=True)
class Scored:
    """One example's result: each choice's summed log-likelihood and token count."""

    index: int
    label: int
    logprobs: tuple
    tokens: tuple

    @property
    def pred(self) -> int:
        return int(np.argmax(self.logprobs))  # the first of equals, as build-nanogpt's argmin of losses

    @property
    def pred_norm(self) -> int:
        return int(np.argmax(np.asarray(self.logprobs) / np.asarray(self.tokens)))


@dataclasses.dataclass
class Task:
    """A task ready to score: the chosen examples of its file, encoded."""

    name: str
    path: str
    total: int  # examples in the file
    examples: list


# ---- reading -------------------------------------------------------------------------------


def read_task(path: str) -> list:
    """Every example of a jsonl task file, checked; errors name the file and line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"task file {path!r} not found; HellaSwag's validation set is "
            f"{HELLASWAG_SOURCE} (docs/evaluation.md)"
        )
    examples = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}:{n}: not JSON ({e.msg}); a task file holds one JSON object per line"
                ) from None
            examples.append(parse_example(record, f"{path}:{n}"))
    if not examples:
        raise ValueError(f"{path} holds no examples")
    return examples


def parse_example(record, where: str) -> Example:
    keys = next(
        (k for k in FORMATS.values() if isinstance(record, dict) and k[0] in record and k[1] in record), None
    )
    if keys is None:
        found = sorted(record)[:8] if isinstance(record, dict) else type(record).__name__
        raise ValueError(
            f"{where}: expected HellaSwag's keys (ctx, endings, label) or (context, choices, "
            f"label); found {found}"
        )
    context, choices, label = record[keys[0]], record[keys[1]], record.get("label")
    if not isinstance(context, str):
        raise ValueError(f"{where}: {keys[0]} must be a string")
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c for c in choices)
    ):
        raise ValueError(f"{where}: {keys[1]} must be a list of two or more non-empty strings")
    if label is None or label == "":
        raise ValueError(
            f"{where}: no label (HellaSwag's test split has none; use its validation set, "
            f"hellaswag_val.jsonl)"
        )
    try:
        label = int(label)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: label must be the index of the right choice, got {label!r}") from None
    if not 0 <= label < len(choices):
        raise ValueError(f"{where}: label {label} is not the index of one of its {len(choices)} choices")
    return Example(context, tuple(choices), label, where)


def pick(total: int, limit: int = 0, subset: int = 0) -> list:
    """Indices of the examples to score, in file order: the first `limit`; or a fixed subset
    of `subset` spread over the file, the same every time (the first `subset` of one seeded
    permutation, so a larger subset holds every smaller one); or (both 0) all of them."""
    if limit and subset:
        raise ValueError("give a limit (the first N examples) or a subset (N spread over the file), not both")
    if limit:
        return list(range(min(limit, total)))
    if subset and subset < total:
        return sorted(np.random.default_rng(SUBSET_SEED).permutation(total)[:subset].tolist())
    return list(range(total))


# ---- tokens ---------------------------------------------------------------------------------


def encode(tokenizer, example: Example, index: int, block_size: int) -> Encoded:
    """Rows of context + " " + choice, the context encoded apart from each choice."""
    try:
        # a context starts a document as training data does (Llama 3: after its bos)
        context = [*tokenizer.doc_prefix, *tokenizer.encode(example.context)] or [tokenizer.eot_id]
        rows, scored = [], []
        for choice in example.choices:
            ending = tokenizer.encode(" " + choice)
            row = (context + ending)[-(block_size + 1) :]
            rows.append(tuple(row))
            scored.append(min(len(ending), len(row) - 1))
    except ValueError as e:  # a character a char-level tokenizer does not know
        raise ValueError(f"{example.where}: {e}") from None
    return Encoded(index, example.label, tuple(rows), tuple(scored))


def encode_task(
    name: str, path: str, examples: list, tokenizer, block_size: int, limit: int = 0, subset: int = 0
) -> Task:
    """The chosen examples of a task (pick), encoded."""
    chosen = pick(len(examples), limit, subset)
    return Task(name, path, len(examples), [encode(tokenizer, examples[i], i, block_size) for i in chosen])


def load_task(name: str, path: str, tokenizer, block_size: int, limit: int = 0, subset: int = 0) -> Task:
    """Read a task file (every line is checked) and encode the chosen examples."""
    return encode_task(name, path, read_task(path), tokenizer, block_size, limit, subset)


def read_tasks(tasks: dict) -> dict:
    """{name: examples} for TrainConfig.eval_tasks (name -> path), every line of every file
    checked. It needs neither tokenizer nor model, so train.py can call it before anything
    slow and a bad file stops the run at once."""
    return {name: read_task(path) for name, path in tasks.items()}


def prepare_tasks(tasks: dict, read: dict, tokenizer, block_size: int, subset: int) -> list:
    """Each task's fixed subset of `subset` examples (0: all), encoded for the model: the
    Tasks that score_tasks scores at every evaluation."""
    return [
        encode_task(name, path, read[name], tokenizer, block_size, subset=subset)
        for name, path in tasks.items()
    ]


# ---- scoring --------------------------------------------------------------------------------


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
        out.append(Scored(e.index, e.label, tuple(logprobs[k : k + len(e.rows)]), e.scored))
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


def accuracy(scored: list, env: Dist | None = None) -> dict:
    """acc, acc_norm and the number of examples, the counts summed over the ranks: the same
    figures whatever the world size."""
    counts = torch.tensor(
        [sum(s.pred == s.label for s in scored), sum(s.pred_norm == s.label for s in scored), len(scored)],
        dtype=torch.long,
        device=env.device if env else "cpu",
    )
    right, right_norm, n = all_reduce_sum(counts, env or Dist()).tolist()
    return {"acc": right / max(n, 1), "acc_norm": right_norm / max(n, 1), "examples": n}


def score_tasks(model, tasks: list, env: Dist, autocast_ctx, max_tokens: int) -> dict:
    """Every task scored across the ranks, as eval-record fields: {hellaswag_acc: ..,
    hellaswag_acc_norm: ..}. Every rank must call it (it all-reduces)."""
    fields = {}
    for task in tasks:
        scored = score_examples(
            model, task.examples, env.device, autocast_ctx, max_tokens, env.rank, env.world
        )
        result = accuracy(scored, env)
        fields.update({metric_key(task.name, m): result[m] for m in METRICS})
    return fields
