"""evaluation/scoring.py: scores that mean what they say (a model trained on the right endings
gets them right, an untrained one is at chance, the three accuracies part where lengths
differ), the harness's standard error, rows scored only at their endings, and any batching
or world size giving the same figures."""

import json
import os
import random
import socket
import statistics
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from test_multiple_choice import ALPHABET, TOK, words, write_jsonl

from evaluation import scoring
from model import GPT, GPTConfig
from text import multiple_choice as mc

SHAPE = dict(vocab_size=TOK.n_vocab, block_size=64, n_layer=2, n_head=2, n_embd=32)


def memory_task(seed=0, contexts=8, variants=4):
    """Each of `contexts` contexts has one right ending; its examples offer it among three
    other contexts' endings, at every position in turn. Ending lengths vary (1 to 5 words)."""
    rng = random.Random(seed)
    pairs = [(words(rng, 3), words(rng, rng.randint(1, 5))) for _ in range(contexts)]
    examples = []
    for i, (ctx, right) in enumerate(pairs):
        for v in range(variants):
            others = [pairs[j][1] for j in rng.sample([j for j in range(contexts) if j != i], 3)]
            label = v % 4
            examples.append(
                {"ctx": ctx, "endings": others[:label] + [right] + others[label:], "label": label}
            )
    return pairs, examples


def trained_on(pairs, steps=120):
    """A tiny model trained on the sequences context + " " + right ending."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE))
    rows = [TOK.encode(c + " " + e + ".") for c, e in pairs]
    width = max(map(len, rows))
    x = torch.zeros((len(rows), width - 1), dtype=torch.long)
    y = torch.full((len(rows), width - 1), -1, dtype=torch.long)
    for k, r in enumerate(rows):
        x[k, : len(r) - 1], y[k, : len(r) - 1] = torch.tensor(r[:-1]), torch.tensor(r[1:])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(steps):
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def scores(model, path, **kw):
    task = mc.load_task("t", path, TOK, model.config.block_size, **kw)
    return scoring.score_examples(model, task.examples, torch.device("cpu"))


def test_a_model_trained_on_the_right_endings_scores_near_100_percent(tmp_path):
    pairs, examples = memory_task()
    result = scoring.accuracy(scores(trained_on(pairs), write_jsonl(tmp_path / "t.jsonl", examples)))
    assert result["examples"] == 32
    assert all(result[m] >= 0.95 for m in scoring.METRICS), result


def test_an_untrained_model_scores_near_chance(tmp_path):
    rng = random.Random(1)
    examples = [
        {
            "context": words(rng, 4),
            "choices": [words(rng, rng.randint(1, 4)) for _ in range(4)],
            "label": rng.randrange(4),
        }
        for _ in range(400)
    ]
    torch.manual_seed(0)
    result = scoring.accuracy(scores(GPT(GPTConfig(**SHAPE)), write_jsonl(tmp_path / "t.jsonl", examples)))
    # four choices: chance is 0.25 (one binomial standard deviation over 400 examples is 0.022)
    assert all(abs(result[m] - 0.25) < 0.08 for m in scoring.METRICS), result
    assert all(
        result[m + "_stderr"] == pytest.approx((result[m] * (1 - result[m]) / 399) ** 0.5)
        for m in scoring.METRICS
    ), result


def test_acc_sums_log_likelihoods_so_it_prefers_short_endings_and_the_normalised_ones_do_not(tmp_path):
    # An untrained model gives every token about the same loss, ln(vocab): the summed
    # log-likelihood (acc) picks the shortest ending, the per-token and per-character ones do not.
    rng = random.Random(2)
    examples = []
    for _ in range(200):
        lengths = rng.sample([1, 3, 5, 7], 4)
        choices = [words(rng, n) for n in lengths]
        examples.append({"context": words(rng, 3), "choices": choices, "label": lengths.index(1)})
    torch.manual_seed(0)
    scored = scores(GPT(GPTConfig(**SHAPE)), write_jsonl(tmp_path / "t.jsonl", examples))
    result = scoring.accuracy(scored)
    assert result["acc"] == 1.0 and result["acc_norm_tokens"] < 0.5 and result["acc_norm_chars"] < 0.5, result
    assert sum(s.pred != s.pred_norm_tokens for s in scored) > 100
    assert result["acc_stderr"] == 0.0  # every answer right: no spread


def test_batches_score_every_row_only_at_its_ending():
    ex = [
        mc.encode(TOK, mc.Example("ab", ("c d", "e"), 0, "f:1"), 0, 64),
        mc.encode(TOK, mc.Example("abcdef", ("g", "hij"), 1, "f:2"), 1, 64),
    ]
    idx, targets = scoring.batch_tensors(ex, "cpu")
    assert idx.shape == targets.shape == (4, 9)  # 6 + " hij" = 10 tokens: 9 inputs
    row = list(ex[1].rows[1])
    assert idx[3].tolist() == row[:-1]
    assert targets[3].tolist() == [-1] * 5 + row[-4:]
    assert (
        targets[1].tolist() == [-1] + list(ex[0].rows[1][-2:]) + [-1] * 6
    )  # "ab e": padding is never scored


LLAMA = dict(norm="rmsnorm", mlp="swiglu", bias=False, rope_theta=10000.0, n_kv_head=1, tie_embeddings=False)


@pytest.mark.parametrize("shape", [{}, LLAMA], ids=["gpt2", "llama"])
def test_a_scored_choice_is_the_sum_of_its_tokens_log_probabilities(shape):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE, **shape)).eval()
    e = mc.encode(TOK, mc.Example("some words", ("here", "and there"), 1, "f:1"), 0, 64)
    got = scoring.score_examples(model, [e], "cpu")[0]
    for row, n, lp in zip(e.rows, e.scored, got.logprobs):
        ids = torch.tensor([row])
        with torch.no_grad():
            logp = torch.log_softmax(model.logits(ids[:, :-1])[0].double(), -1)
        want = sum(logp[t, row[t + 1]].item() for t in range(len(row) - 1 - n, len(row) - 1))
        assert lp == pytest.approx(want, abs=1e-4)
    assert got.tokens == e.scored and got.chars == (4, 9)


def test_batching_and_world_size_leave_every_score_unchanged(tmp_path):
    rng = random.Random(3)
    examples = [
        {
            "context": words(rng, rng.randint(1, 6)),
            "choices": [words(rng, rng.randint(1, 4)) for _ in range(3)],
            "label": 0,
        }
        for _ in range(23)
    ]
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE))
    task = mc.load_task("t", write_jsonl(tmp_path / "t.jsonl", examples), TOK, 64)
    one = scoring.score_examples(model, task.examples, "cpu", max_tokens=1)  # one example per forward
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    for world in (1, 2, 3):
        shards = []
        for rank in range(world):
            calls.clear()
            shards.append(
                scoring.score_examples(model, task.examples, "cpu", max_tokens=200, rank=rank, world=world)
            )
            shards[-1] = (shards[-1], len(calls))
        assert len({n for _, n in shards}) == 1  # every rank runs as many forwards (FSDP needs it)
        merged = sorted((s for part, _ in shards for s in part), key=lambda s: s.index)
        assert [s.index for s in merged] == list(range(23))
        for a, b in zip(merged, one):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4) and a.tokens == b.tokens
    assert model.training  # left as it was found


def test_batches_hold_at_most_max_tokens_and_all_choices_of_an_example():
    ex = [
        mc.Encoded(i, 0, ((1,) * (i + 2),) * 4, (1,) * 4, (1,) * 4) for i in range(10)
    ]  # rows of i + 1 inputs
    batches = scoring.plan_batches(ex, max_tokens=40)
    assert sorted(i for b in batches for i in b) == list(range(10))
    for b in batches:
        assert len(b) == 1 or 4 * len(b) * max(i + 1 for i in b) <= 40


def test_the_three_accuracies_divide_by_nothing_by_tokens_and_by_characters():
    # choice 0: -6 over 2 tokens and 12 characters; choice 1: -10 over 5 tokens and 10 characters
    s = scoring.Scored(0, 0, (-6.0, -10.0), (2, 5), (12, 10))
    assert (s.pred, s.pred_norm_tokens, s.pred_norm_chars) == (0, 1, 0)  # -6 > -10; -3 < -2; -0.5 > -1
    assert scoring.accuracy([s]) == dict(
        acc=1.0,
        acc_stderr=None,  # one example: no spread to estimate
        acc_norm_tokens=0.0,
        acc_norm_tokens_stderr=None,
        acc_norm_chars=1.0,
        acc_norm_chars_stderr=None,
        examples=1,
    )


def test_the_standard_error_is_the_harness_s_mean_stderr():
    """lm-evaluation-harness's mean_stderr: the 0/1 outcomes' sample standard deviation over
    sqrt(n)."""
    rng = random.Random(5)
    scored = []
    for i in range(37):
        lp = tuple(rng.uniform(-20, -1) for _ in range(4))
        scored.append(scoring.Scored(i, rng.randrange(4), lp, tuple(rng.randint(1, 9) for _ in lp), (5,) * 4))
    result = scoring.accuracy(scored)
    for metric in scoring.METRICS:
        outcomes = [float(s.preds()[metric] == s.label) for s in scored]
        assert result[metric] == sum(outcomes) / 37
        assert 0 < result[metric] < 1
        assert result[metric + "_stderr"] == pytest.approx(statistics.stdev(outcomes) / 37**0.5, rel=1e-12)


def test_metric_names_split_back_and_an_old_run_s_acc_norm_reads_as_per_token():
    for metric in scoring.METRICS:
        assert scoring.split_metric_key(scoring.metric_key("hella-swag_2", metric)) == (
            "hella-swag_2",
            metric,
        )
    assert scoring.split_metric_key("hellaswag_acc_norm") == ("hellaswag", "acc_norm_tokens")
    assert (
        scoring.split_metric_key("hellaswag_acc_stderr") is None
        and scoring.split_metric_key("val_loss") is None
    )


SCRIPT = """
import os, sys, json
import torch
from parallel import distributed
from evaluation import scoring
from text import multiple_choice as mc
from model import GPT, GPTConfig
from text.tokenizer import get_tokenizer
env = distributed.setup(distributed.local_device("cpu"), 60, join=True)
torch.manual_seed(0)
model = GPT(GPTConfig(**{shape!r}))
paths = {{"t": {path!r}}}
tasks = mc.prepare_tasks(paths, mc.read_tasks(paths), get_tokenizer("char", {alphabet!r}), 64, subset=17)
fields = scoring.score_tasks(model, tasks, env, torch.autocast("cpu", enabled=False), max_tokens=100)
if env.rank == 0:
    print("RESULT", json.dumps(fields))
distributed.teardown(env, True)
"""


def test_two_ranks_sum_their_counts_to_one_process_s_figures(tmp_path):
    rng = random.Random(4)
    examples = [
        {
            "context": words(rng, 3),
            "choices": [words(rng, rng.randint(1, 3)) for _ in range(4)],
            "label": rng.randrange(4),
        }
        for _ in range(40)
    ]
    path = write_jsonl(tmp_path / "t.jsonl", examples)
    script = tmp_path / "score.py"
    script.write_text(SCRIPT.format(root=ROOT, shape=SHAPE, path=path, alphabet=ALPHABET))
    with socket.socket() as s:  # a free port for the ranks' store
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(
                os.environ,
                OMP_NUM_THREADS="1",
                RANK=str(r),
                LOCAL_RANK=str(r),
                WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
            ),
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-3000:] for _, err in outs]
    got = json.loads(outs[0][0].split("RESULT ", 1)[1])
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE))
    task = mc.load_task("t", path, TOK, 64, subset=17)
    want = scoring.accuracy(scoring.score_examples(model, task.examples, "cpu"))
    assert len(task.examples) == 17 and want["examples"] == 17
    assert got == {f"t_{k}": v for k, v in want.items() if k != "examples"}
    assert set(got) == {
        f"t_{m}{e}" for m in ("acc", "acc_norm_tokens", "acc_norm_chars") for e in ("", "_stderr")
    }
