"""Multiple-choice task files as token rows: HellaSwag's jsonl and any jsonl of {"context",
"choices", "label"}, read and checked line by line, optionally rewritten as
lm-evaluation-harness rewrites HellaSwag, and laid out as llm.c and build-nanogpt lay them
out. evaluation/scoring.py scores the rows with a model.

A choice's row: the context's tokens, then the tokens of " " + choice, encoded apart and
concatenated; the choice's tokens are the scored ones. A row longer than the model's context
loses its oldest context tokens (the choice is kept whole while it fits), as the harness cuts
it; Encoded.truncated marks such an example, so that the scorer can count and warn. An empty
context is the end-of-text token, so that the choice's first token is predicted from
something, as the harness does. The harness instead encodes context + " " + choice as one
string and splits the ids at the context's length, so a token may straddle the boundary
(with GPT-2's tokenizer a choice that starts with a space almost never does).
"""

import dataclasses
import json
import os
import re

import numpy as np

from errors import BadInput, NotFound

FORMATS = {"hellaswag": ("ctx", "endings"), "generic": ("context", "choices")}  # (context key, choices key)
SUBSET_SEED = 0  # which examples a fixed subset holds; changing it changes every subset's scores
HELLASWAG_SOURCE = "data/hellaswag_val.jsonl of github.com/rowanz/hellaswag"
# How a task's text is taken: as the file has it (llm.c), or rewritten as lm-evaluation-harness's
# `hellaswag` task rewrites it (lm_eval/tasks/hellaswag/utils.py), for HellaSwag's files only.
PREPROCESS = ("none", "lm-eval")
LM_EVAL_KEYS = ("activity_label", "ctx_a", "ctx_b")  # the fields lm-eval builds its context from


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
    chars: tuple  # each choice's length in characters, without the space before it (lm-eval's)
    truncated: bool = False  # a row was cut to the model's context: its oldest tokens dropped


@dataclasses.dataclass
class Task:
    """A task ready to score: the chosen examples of its file, encoded."""

    name: str
    path: str
    total: int  # examples in the file
    examples: list

    @property
    def truncated(self) -> int:
        """How many of the chosen examples were cut to the model's context."""
        return sum(e.truncated for e in self.examples)


# ---- reading -------------------------------------------------------------------------------


def read_task(path: str, preprocess: str = "none") -> list:
    """Every example of a jsonl task file, checked; errors name the file and line.
    preprocess="lm-eval" rewrites HellaSwag's text as the harness does (lm_eval_hellaswag)."""
    if preprocess not in PREPROCESS:
        raise BadInput(f"preprocess must be one of {', '.join(PREPROCESS)}, got {preprocess!r}")
    if not os.path.isfile(path):
        raise NotFound(
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
                raise BadInput(
                    f"{path}:{n}: not JSON ({e.msg}); a task file holds one JSON object per line"
                ) from None
            example = parse_example(record, f"{path}:{n}")
            examples.append(lm_eval_hellaswag(record, example) if preprocess == "lm-eval" else example)
    if not examples:
        raise BadInput(f"{path} holds no examples")
    return examples


def parse_example(record, where: str) -> Example:
    keys = next(
        (k for k in FORMATS.values() if isinstance(record, dict) and k[0] in record and k[1] in record), None
    )
    if keys is None:
        found = sorted(record)[:8] if isinstance(record, dict) else type(record).__name__
        raise BadInput(
            f"{where}: expected HellaSwag's keys (ctx, endings, label) or (context, choices, "
            f"label); found {found}"
        )
    context, choices = record[keys[0]], record[keys[1]]
    if not isinstance(context, str):
        raise BadInput(f"{where}: {keys[0]} must be a string")
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c for c in choices)
    ):
        raise BadInput(f"{where}: {keys[1]} must be a list of two or more non-empty strings")
    label = parse_label(record.get("label"), where)
    if not 0 <= label < len(choices):
        raise BadInput(f"{where}: label {label} is not the index of one of its {len(choices)} choices")
    return Example(context, tuple(choices), label, where)


def parse_label(label, where: str) -> int:
    """The right choice's index: an integer, or a string of digits (HellaSwag on the Hugging
    Face hub has "3"). 1.7 or true is refused, not taken as 1."""
    if label is None or label == "":
        raise BadInput(
            f"{where}: no label (HellaSwag's test split has none; use its validation set, "
            f"hellaswag_val.jsonl)"
        )
    if isinstance(label, bool) or not (
        isinstance(label, int)
        or (isinstance(label, float) and label.is_integer())
        or (isinstance(label, str) and label.strip().isdecimal())
    ):
        raise BadInput(
            f"{where}: label must be the index of the right choice, an integer such as 0 or "
            f'"0", got {json.dumps(label)}'
        )
    return int(label)


def lm_eval_text(text: str) -> str:
    """lm-evaluation-harness's HellaSwag preprocess: WikiHow's "[title]" becomes ". ", other
    [bracketed] markers go, double spaces become one."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def lm_eval_hellaswag(record: dict, example: Example) -> Example:
    """The example as lm-evaluation-harness's `hellaswag` scores it: the context is
    activity_label + ": " + ctx_a + " " + ctx_b.capitalize(), and context and endings go
    through lm_eval_text."""
    missing = [k for k in LM_EVAL_KEYS if not isinstance(record.get(k), str)]
    if missing or "endings" not in record:
        raise BadInput(
            f"{example.where}: lm-eval preprocessing needs HellaSwag's fields (activity_label, "
            f"ctx_a, ctx_b, endings); {', '.join(missing) or 'endings'} missing: score this file "
            f"with --preprocess=none"
        )
    context = f"{record['activity_label']}: {record['ctx_a']} {record['ctx_b'].capitalize()}"
    return dataclasses.replace(
        example, context=lm_eval_text(context), choices=tuple(lm_eval_text(c) for c in example.choices)
    )


def pick(total: int, limit: int = 0, subset: int = 0) -> list:
    """Indices of the examples to score, in file order: the first `limit`; or a fixed subset
    of `subset` spread over the file, the same every time (the first `subset` of one seeded
    permutation, so a larger subset holds every smaller one); or (both 0) all of them."""
    if limit and subset:
        raise BadInput("give a limit (the first N examples) or a subset (N spread over the file), not both")
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
        rows, scored, truncated = [], [], False
        for choice in example.choices:
            ending = tokenizer.encode(" " + choice)
            whole = context + ending
            row = whole[-(block_size + 1) :]
            truncated = truncated or len(row) < len(whole)
            rows.append(tuple(row))
            scored.append(min(len(ending), len(row) - 1))
    except ValueError as e:  # a character a char-level tokenizer does not know
        raise BadInput(f"{example.where}: {e}") from None
    chars = tuple(len(c) for c in example.choices)
    return Encoded(index, example.label, tuple(rows), tuple(scored), chars, truncated)


def encode_task(
    name: str, path: str, examples: list, tokenizer, block_size: int, limit: int = 0, subset: int = 0
) -> Task:
    """The chosen examples of a task (pick), encoded."""
    chosen = pick(len(examples), limit, subset)
    return Task(name, path, len(examples), [encode(tokenizer, examples[i], i, block_size) for i in chosen])


def load_task(
    name: str,
    path: str,
    tokenizer,
    block_size: int,
    limit: int = 0,
    subset: int = 0,
    preprocess: str = "none",
) -> Task:
    """Read a task file (every line is checked) and encode the chosen examples."""
    return encode_task(name, path, read_task(path, preprocess), tokenizer, block_size, limit, subset)


def read_tasks(tasks: dict) -> dict:
    """{name: examples} for TrainConfig.eval_tasks (name -> path), every line of every file
    checked. It needs neither tokenizer nor model, so train.py can call it before anything
    slow and a bad file stops the run at once."""
    return {name: read_task(path) for name, path in tasks.items()}


def prepare_tasks(tasks: dict, read: dict, tokenizer, block_size: int, subset: int) -> list:
    """Each task's fixed subset of `subset` examples (0: all), encoded for the model: the
    Tasks that evaluation.scoring.score_tasks scores at every evaluation."""
    return [
        encode_task(name, path, read[name], tokenizer, block_size, subset=subset)
        for name, path in tasks.items()
    ]


def truncation_warning(task: Task, block_size: int) -> str | None:
    """One line when some of a task's examples were cut to the model's context, else None
    (lm-eval warns once per cut example)."""
    if not task.truncated:
        return None
    return (
        f"warning: {task.name}: {task.truncated:,} of {len(task.examples):,} examples are longer than "
        f"the model's {block_size:,}-token context; their oldest tokens were dropped, so their "
        f"scores are not the whole text's"
    )
