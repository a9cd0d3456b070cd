"""evaluate.py: the same choices as an independent scorer (transformers on the exported
model), example by example; the table and JSON; --limit and --subset; one-line errors before
the checkpoint loads."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from test_export import CASES, export_run, random_model, save_run

import evaluate
from text import multiple_choice as mc

CONTEXTS = [
    "A man is sitting on a roof. He",
    "A woman walks into the kitchen and",
    "The kids are playing in the snow,",
    "How to cook rice: rinse the rice, then",
    "The dog runs across the field and",
    "She opens her laptop and",
]
ENDINGS = [
    "starts pulling up roofing on the roof.",
    "picks up a knife.",
    "laugh and throw snowballs at each other.",
    "boil it in water for twenty minutes.",
    "catches the ball in its mouth.",
    "begins to type an email.",
    "is dancing.",
    "falls asleep on the couch while the television plays quietly in the background.",
]


def write_task(path, n=12):
    """HellaSwag's format; endings of different lengths, labels at every position."""
    with open(path, "w") as fh:
        for i in range(n):
            endings = [ENDINGS[(i + k) % len(ENDINGS)] for k in range(4)]
            fh.write(
                json.dumps(
                    {
                        "ind": i,
                        "ctx": CONTEXTS[i % len(CONTEXTS)],
                        "endings": endings,
                        "label": i % 4,
                        "split": "val",
                    }
                )
                + "\n"
            )
    return str(path)


def transformers_choice_logprobs(folder, task_path):
    """Each example's choices scored by transformers alone: its GPT-2 model and tokenizer read
    from the exported folder, one choice per forward, nothing of ours in the loop."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    out = []
    with open(task_path) as fh:
        for line in fh:
            ex = json.loads(line)
            context = tok(ex["ctx"])["input_ids"]
            scores = []
            for ending in ex["endings"]:
                cont = tok(" " + ending)["input_ids"]
                ids = torch.tensor([context + cont])
                with torch.no_grad():
                    logp = torch.log_softmax(hf(ids).logits[0].double(), dim=-1)
                scores.append(sum(logp[t - 1, ids[0, t]].item() for t in range(len(context), ids.size(1))))
            out.append((scores, [len(tok(" " + e)["input_ids"]) for e in ex["endings"]]))
    return out


def test_choices_agree_with_transformers_example_by_example(tmp_path):
    folder = export_run(tmp_path, random_model(**CASES["gpt2_vocab_padded"]))
    task = write_task(tmp_path / "hellaswag_val.jsonl")
    ours = evaluate.main(
        [
            f"--checkpoint={folder}",
            f"--task=hellaswag:{task}",
            "--per_example",
            "--device=cpu",
            f"--out={tmp_path / 'r.json'}",
        ]
    )["tasks"]["hellaswag"]
    theirs = transformers_choice_logprobs(folder, task)
    assert len(ours["per_example"]) == len(theirs) == 12
    right = [0, 0, 0]
    with open(task) as fh:
        endings = [json.loads(line)["endings"] for line in fh]
    for ex, (scores, tokens), ends in zip(ours["per_example"], theirs, endings):
        assert ex["logprobs"] == pytest.approx(scores, rel=1e-4, abs=1e-3) and ex["tokens"] == tokens
        assert ex["chars"] == [len(e) for e in ends]  # lm-eval's completion_len: the ending, no space
        want = [
            max(range(4), key=lambda k: scores[k]),
            max(range(4), key=lambda k: scores[k] / tokens[k]),
            max(range(4), key=lambda k: scores[k] / len(ends[k])),
        ]
        assert [ex["pred"], ex["pred_norm_tokens"], ex["pred_norm_chars"]] == want
        right = [r + (w == ex["label"]) for r, w in zip(right, want)]
    assert [ours[m] for m in ("acc", "acc_norm_tokens", "acc_norm_chars")] == [r / 12 for r in right]
    for m in ("acc", "acc_norm_tokens", "acc_norm_chars"):  # lm-eval's mean_stderr
        assert ours[m + "_stderr"] == pytest.approx((ours[m] * (1 - ours[m]) / 11) ** 0.5)
    assert (
        len({ex["pred"] for ex in ours["per_example"]}) > 1
    )  # a model with preferences, not one constant answer


def test_the_table_and_json_with_limit_and_subset(tmp_path, capsys):
    run = save_run(tmp_path, random_model(**CASES["mlp_not_4x"]))  # a run folder of ours, char-level
    task = tmp_path / "t.jsonl"
    with open(task, "w") as fh:
        for i in range(30):
            fh.write(
                json.dumps(
                    {
                        "context": f"the {'ab'[i % 2]} is",
                        "choices": ["a cat.", "no", "yes it is"],
                        "label": i % 3,
                    }
                )
                + "\n"
            )
    out = tmp_path / "results" / "r.json"
    got = evaluate.main(
        [f"--checkpoint={run}", f"--task={task}", "--limit=5", f"--out={out}", "--device=cpu"]
    )
    assert json.loads(out.read_text()) == got
    r = got["tasks"]["t"]  # named after the file
    assert (r["examples"], r["of"], r["selection"], r["path"]) == (5, 30, "the first 5", str(task))
    assert got["step"] == 7 and got["tokenizer"] == "char" and got["dtype"] == "float32"
    assert (
        f"| t | 5 of 30 | {r['acc']:.4f} ± {r['acc_stderr']:.4f} | {r['acc_norm_tokens']:.4f} ± "
        f"{r['acc_norm_tokens_stderr']:.4f} | {r['acc_norm_chars']:.4f} ± {r['acc_norm_chars_stderr']:.4f} | 0 |"
        in capsys.readouterr().out
    )
    got = evaluate.main(
        [
            f"--checkpoint={run}",
            f"--task=mine:{task}",
            "--subset=7",
            f"--out={out}",
            "--per_example",
            "--device=cpu",
        ]
    )["tasks"]["mine"]
    assert got["examples"] == 7 and [e["index"] for e in got["per_example"]] == mc.pick(30, subset=7)
    assert got["selection"] == "a fixed subset of 7 (seed 0)"


def test_a_bad_task_file_is_an_error_before_the_checkpoint_loads(tmp_path):
    missing = tmp_path / "missing.jsonl"
    proc = subprocess.run(
        [sys.executable, "evaluate.py", "--checkpoint=/nonexistent", f"--task={missing}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert re.fullmatch(
        r"error: task file '.*missing.jsonl' not found; HellaSwag's validation set is "
        r"data/hellaswag_val.jsonl of github.com/rowanz/hellaswag \(docs/evaluation.md\)\n",
        proc.stderr,
    ), proc.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"context": "x", "choices": ["a", "b"], "label": 0}\n{"context": "x", "choices": ["a", "b"]}\n'
    )
    with pytest.raises(ValueError, match="bad.jsonl:2: no label"):  # not the checkpoint's error
        evaluate.main(["--checkpoint=/nonexistent", f"--task={bad}", f"--out={tmp_path / 'r.json'}"])
    with pytest.raises(SystemExit):
        evaluate.parse_args([f"--task={bad}", "--limit=3", "--subset=3"])
    with pytest.raises(SystemExit):
        evaluate.parse_args([f"--task=a:{bad}", f"--task=a:{bad}"])  # two tasks of one name
    assert evaluate.task_spec("hellaswag:data/h.jsonl") == ("hellaswag", "data/h.jsonl")
    assert evaluate.task_spec("data/hellaswag_val.jsonl") == ("hellaswag_val", "data/hellaswag_val.jsonl")
    assert not os.path.exists(tmp_path / "r.json")


def test_lm_eval_preprocessing_and_examples_cut_to_the_context(tmp_path, capsys):
    """--preprocess=lm-eval scores the harness's text; an example longer than the model's
    context is scored cut, counted and warned about."""
    run = save_run(tmp_path, random_model(**CASES["gpt2_vocab_padded"]))  # GPT-2's tokenizer, block_size 64
    ctx_a = "a man is in a kitchen, " * 8 + "[title] he cuts"  # over 64 tokens
    record = {
        "activity_label": "Cooking",
        "ctx_a": ctx_a,
        "ctx_b": "then he",
        "ctx": ctx_a + " then he",
        "endings": ["stirs the pot.", "eats it  all.", "[step] sits."],
    }
    task = tmp_path / "h.jsonl"
    task.write_text(
        json.dumps(dict(record, label=0))
        + "\n"
        + json.dumps(dict(record, ctx="a", label=1))  # short: not cut
        + "\n"
    )
    common = [f"--checkpoint={run}", f"--task=h:{task}", "--device=cpu", "--per_example"]
    plain = evaluate.main([*common, f"--out={tmp_path / 'plain.json'}"])
    err = capsys.readouterr().err
    assert plain["preprocess"] == "none" and plain["tasks"]["h"]["truncated"] == 1
    assert [e["truncated"] for e in plain["tasks"]["h"]["per_example"]] == [True, False]
    assert (
        "warning: h: 1 of 2 examples are longer than the model's 64-token context; their oldest tokens "
        "were dropped, so their scores are not the whole text's (which: --per_example)"
    ) in err
    harness = evaluate.main([*common, "--preprocess=lm-eval", f"--out={tmp_path / 'lm.json'}"])
    examples = harness["tasks"]["h"]["per_example"]
    assert harness["preprocess"] == "lm-eval" and harness["tasks"]["h"]["truncated"] == 2
    # the endings as the harness has them: "eats it all.", " sits." (brackets gone, spaces halved)
    assert examples[0]["chars"] == [14, 12, 6] and plain["tasks"]["h"]["per_example"][0]["chars"] == [
        14,
        13,
        12,
    ]
    assert examples[0]["logprobs"] != plain["tasks"]["h"]["per_example"][0]["logprobs"]
