"""text/multiple_choice.py: reading task files (and refusing bad ones, line by line), lm-eval's
HellaSwag text, tokens as llm.c lays them out, the examples cut to the model's context."""

import json
import random

import pytest
from conftest import tokenizer_folder

from errors import BadInput, NotFound
from text import multiple_choice as mc
from text.tokenizer import get_tokenizer

ALPHABET = " abcdefghijklmnopqrstuvwxyz."
TOK = get_tokenizer("char", ALPHABET)


def words(rng, n):
    return " ".join(
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 5))) for _ in range(n)
    )


def write_jsonl(path, records):
    with open(path, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    return str(path)


def test_rows_are_context_tokens_then_space_and_ending_tokens():
    ex = mc.Example("the cat", ("sat", "ran away"), 1, "f:1")
    e = mc.encode(TOK, ex, 0, block_size=64)
    assert e.rows == (
        tuple(TOK.encode("the cat") + TOK.encode(" sat")),
        tuple(TOK.encode("the cat") + TOK.encode(" ran away")),
    )
    assert e.scored == (4, 9) and e.label == 1 and e.chars == (3, 8) and not e.truncated
    # longer than the context: the oldest context tokens go, the ending stays whole
    short = mc.encode(TOK, ex, 0, block_size=8)
    assert short.rows[1] == tuple(TOK.encode("the cat ran away")[-9:]) and short.scored[1] == 8
    assert short.truncated and not mc.encode(TOK, ex, 0, block_size=15).truncated  # 16 tokens fit
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
        ({"ctx": "x", "endings": ["a", "b"], "label": 1.7}, "label must be the index .* got 1.7$"),
        ({"ctx": "x", "endings": ["a", "b"], "label": True}, "label must be the index .* got true$"),
        ({"ctx": "x", "endings": ["a", "b"], "label": "1.0"}, 'label must be the index .* got "1.0"$'),
        ({"ctx": "x", "endings": ["a", "b"], "label": [1]}, "label must be the index .* got \\[1\\]$"),
        ({"ctx": "x", "endings": ["a"], "label": 0}, "two or more non-empty strings"),
        ({"question": "x", "answers": ["a"]}, "expected HellaSwag's keys"),
    ]:
        bad = write_jsonl(
            tmp_path / "bad.jsonl", [{"context": "Q", "choices": ["y", "n"], "label": 0}, record]
        )
        with pytest.raises(BadInput, match=f"bad.jsonl:2: .*{match}"):
            mc.read_task(bad)
    (tmp_path / "notjson.jsonl").write_text('{"context": "Q"\n')
    with pytest.raises(BadInput, match="notjson.jsonl:1: not JSON"):
        mc.read_task(str(tmp_path / "notjson.jsonl"))
    with pytest.raises(NotFound, match="rowanz/hellaswag"):
        mc.read_task(str(tmp_path / "missing.jsonl"))


def test_a_character_the_tokenizer_lacks_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"context": "fine", "choices": ["ok", "Fine!"], "label": 0}])
    with pytest.raises(BadInput, match=r"t.jsonl:1: characters \['!', 'F'\]"):
        mc.load_task("t", path, TOK, 64)


def test_integer_labels_in_any_spelling_are_read():
    for label in (1, "1", " 1", 1.0):
        assert mc.parse_example({"context": "x", "choices": ["a", "b"], "label": label}, "f:1").label == 1


# A WikiHow example of HellaSwag's validation set, abridged, as rowanz/hellaswag's jsonl has it
WIKIHOW = {
    "activity_label": "Home and Garden",
    "ctx_a": "[header] How to grow tomatoes [title] Pick a sunny spot.",
    "ctx_b": "plant them",
    "ctx": "[header] How to grow tomatoes [title] Pick a sunny spot. plant them",
    "endings": ["[step] Water them daily.  Then wait.", "in the shade.", "[title] Buy seeds.", "now."],
    "label": 0,
}


def test_lm_eval_preprocessing_rewrites_hellaswag_as_the_harness_does(tmp_path):
    path = write_jsonl(tmp_path / "h.jsonl", [WIKIHOW])
    (as_is,) = mc.read_task(path)
    assert (as_is.context, as_is.choices) == (WIKIHOW["ctx"], tuple(WIKIHOW["endings"]))
    (ex,) = mc.read_task(path, preprocess="lm-eval")
    # activity_label: ctx_a Ctx_b; " [title]" -> ". "; other [markers] removed; double spaces halved
    assert ex.context == "Home and Garden: How to grow tomatoes. Pick a sunny spot. Plant them"
    assert ex.choices == (" Water them daily. Then wait.", "in the shade.", " Buy seeds.", "now.")
    assert (ex.label, ex.where) == (0, f"{path}:1")
    generic = write_jsonl(tmp_path / "g.jsonl", [{"context": "Q", "choices": ["y", "n"], "label": 0}])
    with pytest.raises(BadInput, match="g.jsonl:1: lm-eval preprocessing needs HellaSwag's fields"):
        mc.read_task(generic, preprocess="lm-eval")
    with pytest.raises(BadInput, match="preprocess must be one of none, lm-eval"):
        mc.read_task(path, preprocess="harness")


def test_examples_cut_to_the_context_are_counted_and_warned_about(tmp_path):
    rng = random.Random(6)
    records = [{"context": words(rng, n), "choices": ["ab cd", "ef"], "label": 0} for n in (2, 12, 3, 20, 1)]
    task = mc.load_task("t", write_jsonl(tmp_path / "t.jsonl", records), TOK, block_size=32)
    cut = [len(TOK.encode(r["context"] + " ab cd")) > 33 for r in records]
    assert [e.truncated for e in task.examples] == cut and task.truncated == sum(cut) > 0
    assert mc.truncation_warning(task, 32) == (
        f"warning: t: {sum(cut)} of 5 examples are longer than the model's 32-token context; their "
        f"oldest tokens were dropped, so their scores are not the whole text's"
    )
    whole = mc.load_task("t", write_jsonl(tmp_path / "s.jsonl", records[4:]), TOK, 32)
    assert whole.truncated == 0 and mc.truncation_warning(whole, 32) is None
