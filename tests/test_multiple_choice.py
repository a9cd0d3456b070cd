"""multiple_choice.py: reading task files, tokens as llm.c lays them out, and scores that mean
what they say: a model trained on the right endings gets them right, an untrained one is at
chance, acc and acc_norm part where ending lengths differ, and any world size gives the same
figures."""

import json
import os
import random
import socket
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, tokenizer_folder

from model import GPT, GPTConfig
from text import multiple_choice as mc
from text.tokenizer import get_tokenizer

ALPHABET = " abcdefghijklmnopqrstuvwxyz."
TOK = get_tokenizer("char", ALPHABET)
SHAPE = dict(vocab_size=TOK.n_vocab, block_size=64, n_layer=2, n_head=2, n_embd=32)


def words(rng, n):
    return " ".join(
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 5))) for _ in range(n)
    )


def write_jsonl(path, records):
    with open(path, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    return str(path)


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
    return mc.score_examples(model, task.examples, torch.device("cpu"))


def test_a_model_trained_on_the_right_endings_scores_near_100_percent(tmp_path):
    pairs, examples = memory_task()
    result = mc.accuracy(scores(trained_on(pairs), write_jsonl(tmp_path / "t.jsonl", examples)))
    assert result["examples"] == 32
    assert result["acc"] >= 0.95 and result["acc_norm"] >= 0.95, result


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
    result = mc.accuracy(scores(GPT(GPTConfig(**SHAPE)), write_jsonl(tmp_path / "t.jsonl", examples)))
    # four choices: chance is 0.25 (one binomial standard deviation over 400 examples is 0.022)
    assert abs(result["acc"] - 0.25) < 0.08 and abs(result["acc_norm"] - 0.25) < 0.08, result


def test_acc_sums_log_likelihoods_so_it_prefers_short_endings_and_acc_norm_does_not(tmp_path):
    # An untrained model gives every token about the same loss, ln(vocab): the summed
    # log-likelihood (acc) picks the shortest ending, the per-token one (acc_norm) does not.
    rng = random.Random(2)
    examples = []
    for _ in range(200):
        lengths = rng.sample([1, 3, 5, 7], 4)
        choices = [words(rng, n) for n in lengths]
        examples.append({"context": words(rng, 3), "choices": choices, "label": lengths.index(1)})
    torch.manual_seed(0)
    scored = scores(GPT(GPTConfig(**SHAPE)), write_jsonl(tmp_path / "t.jsonl", examples))
    result = mc.accuracy(scored)
    assert result["acc"] == 1.0 and result["acc_norm"] < 0.5, result
    assert sum(s.pred != s.pred_norm for s in scored) > 100


def test_rows_are_context_tokens_then_space_and_ending_tokens():
    ex = mc.Example("the cat", ("sat", "ran away"), 1, "f:1")
    e = mc.encode(TOK, ex, 0, block_size=64)
    assert e.rows == (
        tuple(TOK.encode("the cat") + TOK.encode(" sat")),
        tuple(TOK.encode("the cat") + TOK.encode(" ran away")),
    )
    assert e.scored == (4, 9) and e.label == 1
    # longer than the context: the oldest context tokens go, the ending stays whole
    short = mc.encode(TOK, ex, 0, block_size=8)
    assert short.rows[1] == tuple(TOK.encode("the cat ran away")[-9:]) and short.scored[1] == 8
    # an empty context starts from the end-of-text token
    assert mc.encode(TOK, mc.Example("", ("a", "b"), 0, "f:1"), 0, 64).rows[0] == (
        TOK.eot_id,
        *TOK.encode(" a"),
    )


def test_a_tokenizer_that_starts_documents_with_bos_starts_every_row_with_it(tmp_path):
    llama = get_tokenizer(tokenizer_folder(tmp_path / "llama", "llama3"))
    e = mc.encode(llama, mc.Example("Speak, speak.", ("First", "All"), 0, "f:1"), 0, 64)
    bos = llama.backend.token_to_id("<|begin_of_text|>")
    assert e.rows[1] == (bos, *llama.encode("Speak, speak."), *llama.encode(" All"))
    assert e.scored[1] == len(llama.encode(" All"))


def test_gpt2_rows_encode_context_and_ending_apart():
    gpt2 = get_tokenizer("gpt2")
    e = mc.encode(
        gpt2,
        mc.Example("A man is sitting on a roof. he", ("starts pulling up roofing.",) * 2, 0, "f:1"),
        0,
        1024,
    )
    ending = gpt2.encode(" starts pulling up roofing.")
    assert e.rows[0] == tuple(gpt2.encode("A man is sitting on a roof. he") + ending) and e.scored[0] == len(
        ending
    )


def test_batches_score_every_row_only_at_its_ending():
    ex = [
        mc.encode(TOK, mc.Example("ab", ("c d", "e"), 0, "f:1"), 0, 64),
        mc.encode(TOK, mc.Example("abcdef", ("g", "hij"), 1, "f:2"), 1, 64),
    ]
    idx, targets = mc.batch_tensors(ex, "cpu")
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
    got = mc.score_examples(model, [e], "cpu")[0]
    for row, n, lp in zip(e.rows, e.scored, got.logprobs):
        ids = torch.tensor([row])
        with torch.no_grad():
            logp = torch.log_softmax(model.logits(ids[:, :-1])[0].double(), -1)
        want = sum(logp[t, row[t + 1]].item() for t in range(len(row) - 1 - n, len(row) - 1))
        assert lp == pytest.approx(want, abs=1e-4)
    assert got.tokens == e.scored


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
    one = mc.score_examples(model, task.examples, "cpu", max_tokens=1)  # one example per forward
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    for world in (1, 2, 3):
        shards = []
        for rank in range(world):
            calls.clear()
            shards.append(
                mc.score_examples(model, task.examples, "cpu", max_tokens=200, rank=rank, world=world)
            )
            shards[-1] = (shards[-1], len(calls))
        assert len({n for _, n in shards}) == 1  # every rank runs as many forwards (FSDP needs it)
        merged = sorted((s for part, _ in shards for s in part), key=lambda s: s.index)
        assert [s.index for s in merged] == list(range(23))
        for a, b in zip(merged, one):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4) and a.tokens == b.tokens
    assert model.training  # left as it was found


def test_batches_hold_at_most_max_tokens_and_all_choices_of_an_example():
    ex = [mc.Encoded(i, 0, ((1,) * (i + 2),) * 4, (1,) * 4) for i in range(10)]  # rows of i + 1 inputs
    batches = mc.plan_batches(ex, max_tokens=40)
    assert sorted(i for b in batches for i in b) == list(range(10))
    for b in batches:
        assert len(b) == 1 or 4 * len(b) * max(i + 1 for i in b) <= 40


def test_a_fixed_subset_is_the_same_every_time_and_grows_by_adding():
    a, b = mc.pick(10_042, subset=500), mc.pick(10_042, subset=1000)
    assert a == mc.pick(10_042, subset=500) and a == sorted(a) and len(set(a)) == 500
    assert set(a) < set(b)
    assert max(a) > 9_000 and min(a) < 1_000  # spread over the file, not its head
    assert mc.pick(10, limit=3) == [0, 1, 2] and mc.pick(10, subset=50) == mc.pick(10) == list(range(10))


def test_both_formats_are_read_and_bad_lines_are_named(tmp_path):
    path = write_jsonl(
        tmp_path / "t.jsonl",
        [
            {"ind": 4, "ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 3, "activity_label": "x"},
            {"context": "Q", "choices": ["yes", "no"], "label": "1"},
        ],
    )
    a, b = mc.read_task(path)
    assert (a.context, a.choices, a.label, a.where) == ("A man", ("a", "b", "c", "d"), 3, f"{path}:1")
    assert (b.context, b.choices, b.label) == ("Q", ("yes", "no"), 1)
    for record, match in [
        ({"ctx": "x", "endings": ["a", "b"], "label": ""}, "no label"),
        ({"ctx": "x", "endings": ["a", "b"], "label": 2}, "label 2 is not the index"),
        ({"ctx": "x", "endings": ["a"], "label": 0}, "two or more non-empty strings"),
        ({"question": "x", "answers": ["a"]}, "expected HellaSwag's keys"),
    ]:
        bad = write_jsonl(
            tmp_path / "bad.jsonl", [{"context": "Q", "choices": ["y", "n"], "label": 0}, record]
        )
        with pytest.raises(ValueError, match=f"bad.jsonl:2: .*{match}"):
            mc.read_task(bad)
    (tmp_path / "notjson.jsonl").write_text('{"context": "Q"\n')
    with pytest.raises(ValueError, match="notjson.jsonl:1: not JSON"):
        mc.read_task(str(tmp_path / "notjson.jsonl"))
    with pytest.raises(FileNotFoundError, match="rowanz/hellaswag"):
        mc.read_task(str(tmp_path / "missing.jsonl"))


def test_a_character_the_tokenizer_lacks_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"context": "fine", "choices": ["ok", "Fine!"], "label": 0}])
    with pytest.raises(ValueError, match=r"t.jsonl:1: characters \['!', 'F'\]"):
        mc.load_task("t", path, TOK, 64)


SCRIPT = """
import os, sys, json
import torch
from parallel import distributed
from text import multiple_choice as mc
from model import GPT, GPTConfig
from text.tokenizer import get_tokenizer
env = distributed.setup(distributed.local_device("cpu"), 60, join=True)
torch.manual_seed(0)
model = GPT(GPTConfig(**{shape!r}))
paths = {{"t": {path!r}}}
tasks = mc.prepare_tasks(paths, mc.read_tasks(paths), get_tokenizer("char", {alphabet!r}), 64, subset=17)
fields = mc.score_tasks(model, tasks, env, torch.autocast("cpu", enabled=False), max_tokens=100)
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
    want = mc.accuracy(mc.score_examples(model, task.examples, "cpu"))
    assert len(task.examples) == 17 and want["examples"] == 17
    assert got == {"t_acc": want["acc"], "t_acc_norm": want["acc_norm"]}
