import json
import os
import pickle
import re

import numpy as np
import pytest
import torch
from conftest import TEXT, alphabet, write_dataset

from text import loader
from text.loader import TokenWindows, check_vocab, load_meta, read_meta
from text.tokenizer import load_tokenizer


@pytest.fixture
def counting_data(tmp_path):
    ids = np.arange(5000) % 60000  # token i at position i: windows are easy to check
    return write_dataset(str(tmp_path / "d"), ids, ids[:600], 60001)


def test_windows_are_shifted_slices_of_the_data(counting_data):
    meta = read_meta(counting_data)
    w = TokenWindows(counting_data, "train", 32, meta, seed=1)
    x, y = w.batch(step=7, global_batch=8, first=0, count=8)
    assert x.dtype == torch.int64 and x.shape == (8, 32)
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(8, 31, dtype=torch.int64))  # contiguous slices
    assert x.min() >= 0 and y.max() < 5000


def test_windows_are_a_pure_function_of_seed_step_and_index(counting_data):
    meta = read_meta(counting_data)
    a = TokenWindows(counting_data, "train", 32, meta, seed=1)
    b = TokenWindows(counting_data, "train", 32, meta, seed=1)
    whole, _ = a.batch(3, 8, 0, 8)
    # 8 ranks x 1 sequence, or 2 micro-steps x 4: the same windows of the global batch
    parts = torch.cat([b.batch(3, 8, i, 1)[0] for i in range(8)])
    assert torch.equal(whole, parts)
    assert torch.equal(whole[4:], b.batch(3, 8, 4, 4)[0])
    assert not torch.equal(whole, a.batch(4, 8, 0, 8)[0])  # another step, other windows
    other_seed = TokenWindows(counting_data, "train", 32, meta, seed=2)
    assert not torch.equal(whole, other_seed.batch(3, 8, 0, 8)[0])
    assert not torch.equal(whole, a.batch(3, 8, 0, 8, stream=1)[0])  # eval draws differ from training


def test_uint32_data(tmp_path):
    ids = np.arange(3000, dtype=np.uint32) + 70_000
    folder = write_dataset(str(tmp_path / "big"), ids, ids, 100_000, dtype="uint32")
    w = TokenWindows(folder, "train", 16, read_meta(folder), seed=0)
    x, _ = w.batch(0, 2, 0, 2)
    assert x.min() >= 70_000


def test_nanogpt_data_without_meta_is_gpt2(tmp_path, capsys):
    folder = write_dataset(str(tmp_path / "n"), np.arange(100), np.arange(100), 50257)
    os.remove(os.path.join(folder, "meta.json"))
    meta = read_meta(folder)
    assert meta["vocab_size"] == 50257 and meta["dtype"] == "uint16" and meta["eot_id"] == 50256
    assert "assuming GPT-2 token ids" in capsys.readouterr().err
    check_vocab(meta, 50257, folder)
    np.array([5, 60000, 7], dtype=np.uint16).tofile(os.path.join(folder, "val.bin"))
    with pytest.raises(
        ValueError, match=re.escape(os.path.join(folder, "val.bin")) + " holds token id 60,000"
    ):
        check_vocab(read_meta(folder), 50257, folder)


def test_errors(tmp_path, counting_data):
    with pytest.raises(FileNotFoundError, match="prepare_data.py"):
        read_meta(str(tmp_path / "nope"))
    empty = write_dataset(str(tmp_path / "e"), [], [1, 2], 10)
    with pytest.raises(FileNotFoundError, match="too few documents"):
        read_meta(empty)
    open(os.path.join(counting_data, ".incomplete"), "w").close()
    with pytest.raises(FileNotFoundError, match="interrupted prepare_data.py"):
        read_meta(counting_data)
    os.remove(os.path.join(counting_data, ".incomplete"))
    meta = read_meta(counting_data)
    with pytest.raises(ValueError, match="lower --block_size"):
        TokenWindows(counting_data, "val", 1000, meta, seed=0)
    with pytest.raises(
        ValueError,
        match=re.escape(os.path.join(counting_data, "meta.json"))
        + " says vocab_size 60,001 but the model's vocab is 50,257",
    ):
        check_vocab(meta, 50257, counting_data)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_no_mapping_is_held_between_batches(counting_data):
    """A memmap kept open for a whole run keeps every page it touched resident (nanoGPT
    reopens it per batch for this reason): the loader must release its mapping."""
    w = TokenWindows(counting_data, "train", 32, read_meta(counting_data), seed=0)
    for step in range(3):
        w.batch(step, 4, 0, 4)
    with open("/proc/self/maps") as fh:
        assert w.path not in fh.read()


# ---------------------------------------------------------------- data that does not match its meta


def names(path):
    """pytest.raises match: the message names the file and how to fix it."""
    return re.escape(path) + ".*prepare_data.py"


def rewrite_meta(folder, **changes):
    path = os.path.join(folder, "meta.json")
    with open(path) as fh:
        meta = json.load(fh)
    meta.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del meta[key]
    with open(path, "w") as fh:
        json.dump(meta, fh)
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(eot_id=None), "lacks the key 'eot_id'"),
        (dict(dtype=None), "lacks the key 'dtype'"),
        (dict(chars=None), "lacks the key 'chars'"),  # a char tokenizer cannot decode without it
        (dict(vocab_size="60001"), "vocab_size is '60001', not a whole number"),
        (dict(dtype="int32"), "dtype 'int32' is not uint16 or uint32"),
        (dict(dtype="uint8"), "dtype 'uint8' is not uint16 or uint32"),
        (dict(vocab_size=70_000, eot_id=0), "vocab_size 70,000 does not fit uint16"),
        (dict(eot_id=60001), "eot_id 60,001 is outside the vocab"),
        (dict(max_token_id=-1), "max_token_id is -1, not a whole number"),
    ],
)
def test_a_bad_meta_json_is_one_line_naming_it(counting_data, changes, message):
    path = rewrite_meta(counting_data, **changes)
    with pytest.raises(
        ValueError, match=re.escape(path) + ".*" + re.escape(message) + ".*prepare_data.py"
    ) as e:
        read_meta(counting_data)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            lambda m: dict(chars=m["chars"][:-1]),
            "vocab_size 34 and eot_id 33 disagree with its 32 chars (vocab_size 33, eot_id 32)",
        ),
        (
            lambda m: dict(vocab_size=m["vocab_size"] + 1),
            "vocab_size 35 and eot_id 33 disagree with its 33 chars",
        ),
        (lambda m: dict(chars=m["chars"][::-1]), "chars is not a sorted alphabet of distinct characters"),
        (
            lambda m: dict(chars=m["chars"] + m["chars"][-1]),
            "chars is not a sorted alphabet",
        ),  # a repeated one
        (lambda m: dict(chars=""), "chars is not a sorted alphabet"),
        (
            lambda m: dict(tokenizer="gpt2", chars=None, vocab_size=50304, eot_id=50256),
            "vocab_size 50,304 and eot_id 50,256 disagree with GPT-2's tokenizer (vocab_size 50,257",
        ),
    ],
)
def test_a_vocabulary_that_disagrees_with_its_tokenizer_is_refused(char_data, changes, message):
    """A meta.json that would train and then fail when sample.py rebuilds its tokenizer."""
    with open(os.path.join(char_data, "meta.json")) as fh:
        meta = json.load(fh)
    path = rewrite_meta(char_data, **changes(meta))
    with pytest.raises(
        ValueError, match=re.escape(path) + ".*" + re.escape(message) + ".*prepare_data.py"
    ) as e:
        read_meta(char_data)
    assert "\n" not in str(e.value)


def test_what_read_meta_accepts_sample_can_tokenize(char_data):
    meta = read_meta(char_data)
    tok = load_tokenizer(meta)
    assert (tok.n_vocab, tok.eot_id) == (meta["vocab_size"], meta["eot_id"])


@pytest.mark.parametrize(
    "text, message",
    [
        ("{\"dtype\": ", "is not valid JSON"),
        ("[1, 2]", "holds a JSON list"),
        (b"\xff\xfe{}", "is not valid JSON"),
    ],
)
def test_a_meta_json_that_does_not_parse(counting_data, text, message):
    path = os.path.join(counting_data, "meta.json")
    with open(path, "wb") as fh:
        fh.write(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=names(path)) as e:
        read_meta(counting_data)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("dtype, extra", [("uint16", 1), ("uint32", 2)])
def test_a_bin_that_is_not_whole_tokens(tmp_path, dtype, extra):
    folder = write_dataset(str(tmp_path / "d"), np.arange(300), np.arange(300), 1000, dtype=dtype)
    path = os.path.join(folder, "val.bin")
    with open(path, "ab") as fh:
        fh.write(b"\0" * extra)
    with pytest.raises(ValueError, match=names(path)) as e:
        read_meta(folder)
    assert f"not a whole number of {dtype} tokens" in str(e.value)


def test_a_bin_from_another_run_than_its_meta(counting_data):
    rewrite_meta(counting_data, train_tokens=4000)
    with pytest.raises(ValueError, match=names(os.path.join(counting_data, "train.bin"))) as e:
        read_meta(counting_data)
    assert "holds 5,000 tokens but" in str(e.value) and "train_tokens 4,000" in str(e.value)


def test_recorded_max_token_id_must_fit_the_model(counting_data):
    path = rewrite_meta(counting_data, max_token_id=4999)
    check_vocab(read_meta(counting_data), 60001, counting_data)
    rewrite_meta(counting_data, vocab_size=5000, eot_id=4999, chars=alphabet(4999))
    check_vocab(read_meta(counting_data), 5000, counting_data)  # largest id 4999 fits 5000 ids
    rewrite_meta(counting_data, max_token_id=5000)
    with pytest.raises(ValueError, match=names(path)) as e:
        check_vocab(read_meta(counting_data), 5000, counting_data)
    assert "max_token_id 5,000, at or above the model's vocab 5,000" in str(e.value)


def test_old_meta_without_max_token_id_is_scanned(counting_data):
    rewrite_meta(
        counting_data, vocab_size=4000, eot_id=3999, chars=alphabet(3999)
    )  # but train.bin holds 0..4999
    with pytest.raises(ValueError, match=names(os.path.join(counting_data, "train.bin"))) as e:
        check_vocab(read_meta(counting_data), 4000, counting_data)
    assert "holds token id 4,999, at or above the model's vocab 4,000" in str(e.value)


def test_large_old_data_is_sampled_and_the_batch_check_catches_the_rest(tmp_path, monkeypatch, capsys):
    """Above FULL_SCAN_BYTES only blocks are read; an id between them is caught by the
    batch that reads it, with the file named, instead of an IndexError in the model."""
    ids = np.arange(400) % 50
    ids[200] = 99
    folder = write_dataset(str(tmp_path / "d"), ids, ids, 50)
    monkeypatch.setattr(loader, "FULL_SCAN_BYTES", 0)
    monkeypatch.setattr(loader, "SCAN_BLOCKS", 2)
    monkeypatch.setattr(loader, "SCAN_BLOCK_TOKENS", 10)  # reads tokens 0..9 and 390..399
    meta = read_meta(folder)
    check_vocab(meta, 50, folder)
    assert "records no max_token_id" in capsys.readouterr().err
    w = TokenWindows(folder, "train", 300, meta, seed=0)  # every window covers token 200
    with pytest.raises(ValueError, match=names(w.path)) as e:
        w.batch(0, 2, 0, 2)
    assert "token id 99 at token 200, at or above the model's vocab 50" in str(e.value)
    monkeypatch.setattr(loader, "SCAN_BLOCK_TOKENS", 400)  # a block that covers it is refused up front
    with pytest.raises(ValueError, match="holds token id 99"):
        check_vocab(meta, 50, folder)


def test_batches_are_checked_against_the_models_vocab(counting_data):
    meta = read_meta(counting_data)
    TokenWindows(counting_data, "val", 32, meta, seed=0, vocab_limit=600).batch(0, 4, 0, 4)  # val is 0..599
    w = TokenWindows(counting_data, "train", 4000, meta, seed=0, vocab_limit=4000)
    with pytest.raises(ValueError, match=names(w.path)) as e:
        w.batch(0, 2, 0, 2)
    assert "at or above the model's vocab 4,000" in str(e.value)


def nanogpt_char_folder(folder, text=TEXT, protocol=pickle.DEFAULT_PROTOCOL):
    """What nanoGPT's data/shakespeare_char/prepare.py writes."""
    os.makedirs(folder)
    chars = sorted(list(set(text)))
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    ids[: len(ids) // 2].tofile(os.path.join(folder, "train.bin"))
    ids[len(ids) // 2 :].tofile(os.path.join(folder, "val.bin"))
    with open(os.path.join(folder, "meta.pkl"), "wb") as fh:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, fh, protocol=protocol)
    return str(folder), ids


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_nanogpt_char_meta_pkl_keeps_its_ids(tmp_path, protocol):
    folder, ids = nanogpt_char_folder(tmp_path / "shakespeare_char", protocol=protocol)
    meta = read_meta(folder)
    n = len(set(TEXT))
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_id"], meta["dtype"]) == (
        "char",
        n + 1,
        n,
        "uint16",
    )
    tok = load_tokenizer(meta)
    assert tok.encode(TEXT) == ids.tolist() and tok.decode(ids) == TEXT
    check_vocab(meta, meta["vocab_size"], folder)
    x, y = TokenWindows(folder, "train", 16, meta, seed=0).batch(0, 2, 0, 2)
    assert x.max() < n
    with open(os.path.join(folder, "meta.json"), "w") as fh:  # meta.json, when there, wins
        json.dump({**meta, "chars": meta["chars"][1:], "vocab_size": n, "eot_id": n - 1}, fh)
    assert read_meta(folder)["chars"] == meta["chars"][1:]


class RunsCode:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.mkdir, (self.target,)


@pytest.mark.parametrize(
    "content, message",
    [
        (lambda tmp: RunsCode(str(tmp / "pwned")), "which a plain meta.pkl never does"),
        (lambda tmp: {"vocab_size": 3}, "has no 'itos' dict"),
        (lambda tmp: {"itos": {0: "b", 1: "a"}}, "sorted alphabet"),
        (lambda tmp: {"itos": {0: "a", 2: "b"}}, "sorted alphabet"),
        (lambda tmp: {"itos": {0: "a", 1: "b"}, "vocab_size": 3}, "disagrees with 'itos'"),
        (lambda tmp: b"not a pickle", None),
    ],
)
def test_a_bad_meta_pkl_is_refused_without_running_it(tmp_path, content, message):
    folder, _ = nanogpt_char_folder(tmp_path / "d", text="ab")
    path = os.path.join(folder, "meta.pkl")
    value = content(tmp_path)
    with open(path, "wb") as fh:
        fh.write(value if isinstance(value, bytes) else pickle.dumps(value))
    with pytest.raises(ValueError, match=names(path)) as e:
        load_meta(folder)
    assert message is None or message in str(e.value)
    assert not os.path.exists(tmp_path / "pwned")


def test_load_meta_needs_no_bins_but_refuses_a_half_written_folder(tmp_path):
    folder = write_dataset(str(tmp_path / "d"), [1, 2], [1, 2], 10)
    os.remove(os.path.join(folder, "train.bin"))
    assert load_meta(folder)["vocab_size"] == 10
    with pytest.raises(FileNotFoundError, match="train.bin is missing"):
        read_meta(folder)
    open(os.path.join(folder, ".incomplete"), "w").close()
    with pytest.raises(FileNotFoundError, match="interrupted prepare_data.py"):
        load_meta(folder)


# ---------------------------------------------------------------- mixtures


@pytest.fixture
def two_datasets(tmp_path):
    """A: ids 0..4999, B: ids 10,000..12,999 (val: their first 600): a window's ids say where it came from."""
    a = np.arange(5000)
    b = 10_000 + np.arange(3000)
    return (
        write_dataset(str(tmp_path / "a"), a, a[:600], 60001),
        write_dataset(str(tmp_path / "b"), b, b[:600], 60001),
    )


def mixture(data_mix, split="train", block=32, seed=1, **kw):
    return loader.TokenMixture(data_mix, split, block, loader.read_mixture_metas(data_mix), seed, **kw)


def test_one_dataset_with_weight_1_gives_exactly_its_token_windows(counting_data):
    meta = read_meta(counting_data)
    plain = TokenWindows(counting_data, "train", 32, meta, seed=1)
    mixed = mixture({counting_data: 1.0})
    for step in range(5):
        for stream in (0, 1):
            for first, count in ((0, 8), (3, 2)):
                assert torch.equal(
                    plain.batch(step, 8, first, count, stream=stream)[0],
                    mixed.batch(step, 8, first, count, stream=stream)[0],
                )
    assert mixed.n_tokens == plain.n_tokens


def test_mixture_draws_by_weight_and_each_row_is_its_datasets_window(two_datasets):
    a, b = two_datasets
    mixed = mixture({a: 3, b: 1})  # relative weights: 0.75 and 0.25
    only = {d: TokenWindows(d, "train", 32, read_meta(d), seed=1) for d in (a, b)}
    from_b = 0
    for step in range(100):
        x, y = mixed.batch(step, 16, 0, 16)
        assert torch.equal(y[:, :-1], x[:, 1:])
        is_b = x[:, 0] >= 10_000
        assert torch.equal(is_b, torch.tensor(mixed.choices(step, 16) == 1))
        for d, rows in ((a, ~is_b), (b, is_b)):  # each row is the window its dataset draws for that index
            assert torch.equal(x[rows], only[d].batch(step, 16, 0, 16)[0][rows])
        from_b += int(is_b.sum())
    assert 0.20 < from_b / 1600 < 0.30
    assert mixed.n_tokens == 8000


def test_mixture_is_a_pure_function_of_seed_step_and_index(two_datasets):
    a, b = two_datasets
    mixed, again = mixture({a: 0.5, b: 0.5}), mixture({a: 0.5, b: 0.5})
    whole = mixed.batch(3, 8, 0, 8)[0]
    assert 0 < int((whole[:, 0] >= 10_000).sum()) < 8  # both datasets in this batch
    assert torch.equal(whole, torch.cat([again.batch(3, 8, i, 1)[0] for i in range(8)]))  # 8 ranks
    assert torch.equal(whole[4:], again.batch(3, 8, 4, 4)[0])  # 2 micro-steps
    assert not torch.equal(whole, mixture({a: 0.5, b: 0.5}, seed=2).batch(3, 8, 0, 8)[0])
    assert not torch.equal(whole, mixed.batch(3, 8, 0, 8, stream=1)[0])


def test_mixture_mean_and_drawn_tokens(two_datasets):
    a, b = two_datasets
    mixed = mixture({a: 0.7, b: 0.3})
    assert mixed.mean({a: 2.0, b: 4.0}) == pytest.approx(0.7 * 2 + 0.3 * 4)
    drawn = mixed.drawn(10_000)
    assert [(d["data_dir"], d["tokens"]) for d in drawn] == [
        (a, pytest.approx(7000)),
        (b, pytest.approx(3000)),
    ]
    assert [d["epochs"] for d in drawn] == [pytest.approx(7000 / 5000), pytest.approx(3000 / 3000)]


@pytest.mark.parametrize("weight", [0, -0.5, float("nan"), float("inf"), True, "0.3", None])
def test_mixture_refuses_weights_that_are_not_positive_numbers(two_datasets, weight):
    a, b = two_datasets
    with pytest.raises(ValueError, match=f"weight of '{re.escape(b)}' is .*must be a positive number"):
        loader.read_mixture_metas({a: 1, b: weight})


def test_mixture_refuses_datasets_with_other_tokenizers(two_datasets, tmp_path):
    a, _ = two_datasets
    ids = np.arange(2000)
    other_vocab = write_dataset(str(tmp_path / "v"), ids, ids, 50257)
    gpt2 = write_dataset(
        str(tmp_path / "g"), ids, ids, 50257, meta_extra={"tokenizer": "gpt2", "chars": None}
    )
    other_chars = write_dataset(
        str(tmp_path / "c"), ids, ids, 60001, meta_extra={"chars": alphabet(60001)[1:]}
    )  # as many characters, not the same
    for folder, key in (
        (other_vocab, r"char \(vocab_size 60001, .*\) vs char \(vocab_size 50257, "),
        (gpt2, r"char \(vocab_size 60001, .*\) vs gpt2 \(vocab_size 50257\)"),
        (
            other_chars,
            r"char \(vocab_size 60001, alphabet sha256 (\w+)\) vs char \(vocab_size 60001, alphabet sha256 (?!\1)",
        ),
    ):
        with pytest.raises(
            ValueError,
            match=f"{re.escape(a)} and {re.escape(folder)} have different tokenizers \\({key}.*\\); .*same --tokenizer",
        ):
            loader.read_mixture_metas({a: 1, folder: 1})


def test_mixture_refuses_a_val_split_shorter_than_the_context_and_other_mistakes(two_datasets, tmp_path):
    a, b = two_datasets
    short = write_dataset(str(tmp_path / "s"), np.arange(5000), np.arange(20), 60001)
    mixture({a: 1, short: 1}, block=16)  # its train split is long enough
    with pytest.raises(
        ValueError,
        match=re.escape(os.path.join(short, "val.bin")) + " holds 20 tokens, fewer "
        "than block_size \\+ 1 = 33",
    ):
        mixture({a: 1, short: 1}, split="val", block=32)
    with pytest.raises(ValueError, match="names .* the same folder"):
        loader.read_mixture_metas({a: 1, a + "/": 1})
    for bad in ({}, [a, b]):
        with pytest.raises(ValueError, match="data_mix must name datasets"):
            loader.check_data_mix(bad)


def test_mixture_batches_are_checked_against_the_models_vocab(two_datasets):
    a, b = two_datasets
    mixed = mixture({a: 1, b: 1}, vocab_limit=10_000)  # B's ids are all >= 10,000
    with pytest.raises(ValueError, match=re.escape(os.path.join(b, "train.bin")) + " holds token id 1"):
        for step in range(10):
            mixed.batch(step, 8, 0, 8)


def test_every_row_read_is_checked_against_the_vocab(counting_data):
    w = TokenWindows(counting_data, "train", 32, read_meta(counting_data), seed=1, vocab_limit=4000)
    windows = np.zeros((3, 33), dtype=np.int64)
    w.read_into(windows, np.array([0, 1, 2]), np.array([0, 100, 3000]))  # ids below 4,000: fine
    with pytest.raises(ValueError, match="holds token id 4,022 at token 4,022"):
        w.read_into(windows, np.array([0, 2]), np.array([0, 3990]))  # the second row reaches 4,022
