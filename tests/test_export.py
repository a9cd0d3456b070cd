"""export.py: our checkpoints as Hugging Face GPT-2 folders that transformers loads offline
and runs to the same logits, the same greedy text, and the same token ids."""

import json
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # everything here is local files; never reach for the Hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from conftest import flip_a_bit, flip_a_bit_in_member

import export
import sample
from errors import run_cli
from model import GPT, GPTConfig
from storage import checkpoint
from storage.checkpoint import save_checkpoint
from storage.interop import CONV1D_WEIGHTS, load_external
from text.bpe import train_bpe
from text.tokenizer import EOT_TEXT, get_tokenizer, gpt2_files, tokenizer_identity

CHARS = "".join(sorted("\n !',.:;?abcdefghijklmnopqrstuvwxyzAB"))  # 37 + eot: vocab 38, padded to 64
CASES = {  # the three shapes the issue names, each a real export path
    "mlp_not_4x": dict(vocab_size=len(CHARS) + 1, n_embd=32, mlp_hidden=88),  # 2.75x, like 300m's 2.875x
    "bias_false": dict(vocab_size=len(CHARS) + 1, n_embd=32, bias=False),
    "gpt2_vocab_padded": dict(vocab_size=50257, n_embd=32),  # 50,257 rows padded to 50,304
}


def random_model(seed=0, **fields) -> GPT:
    """A model whose every parameter is random (biases and LayerNorms too, so a mapping
    that mixes them up cannot pass) and whose logits are varied enough for greedy tests."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{"block_size": 64, "n_layer": 2, "n_head": 2, **fields}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
            else:
                p.normal_(1.0 if "ln" in name and name.endswith("weight") else 0.0, 0.1)
        model.wte.weight.div_(model.wte.weight.norm(dim=1, keepdim=True))
    return model.eval()


def tokenizer_for(cfg: GPTConfig):
    return get_tokenizer("gpt2") if cfg.vocab_size == 50257 else get_tokenizer("char", CHARS)


def save_run(tmp_path, model, step=7) -> str:
    """A run folder as train.py writes it: best_model.pt, and the TrainConfig as config.json
    (which must not make it look like a Hugging Face folder)."""
    run = tmp_path / "checkpoints" / "run"
    save_checkpoint(
        {
            "step": step,
            "model": model.state_dict(),
            "model_config": vars(model.config),
            "tokenizer": tokenizer_for(model.config).meta(),
        },
        str(run / "best_model.pt"),
    )
    (run / "config.json").write_text(json.dumps({"run_name": "run", "model": "tiny", "n_layer": 2}))
    return str(run)


def export_run(tmp_path, model, *extra) -> str:
    out = str(tmp_path / "exports" / "m")
    export.main([f"--checkpoint={save_run(tmp_path, model)}", f"--out={out}", *extra])
    return out


def all_logits(model, idx):
    with torch.no_grad():
        return model.logits(idx)


def hf_greedy(hf, idx, n):
    hf.generation_config.eos_token_id = None  # run all n steps, as sample.py without --stop_at_eot
    with torch.no_grad():
        return hf.generate(
            idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, do_sample=False, pad_token_id=0
        )


# ---- ours -> export -> transformers -----------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_transformers_gives_our_logits_and_greedy_tokens(tmp_path, case):
    transformers = pytest.importorskip("transformers")
    model = random_model(**CASES[case])
    if case == "gpt2_vocab_padded":
        assert model.config.padded_vocab > model.config.vocab_size
    out = export_run(tmp_path, model)
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    idx = torch.randint(0, model.config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    want = all_logits(model, idx)
    got = hf(idx).logits
    assert got.shape == want.shape  # padding rows are gone: vocab_size columns, not padded_vocab
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    # greedy: 30 new tokens after a 5-token prompt, inside the 64-token context
    prompt = idx[:1, :5]
    ours = sample.generate(model, prompt, 30, temperature=0.0)
    assert torch.equal(hf_greedy(hf, prompt, 30), ours)
    assert len(set(ours[0, 5:].tolist())) > 3  # a varied continuation, not one repeated id


def test_sample_cli_greedy_text_equals_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = random_model(**CASES["mlp_not_4x"])
    out = export_run(tmp_path, model)
    texts = sample.main(
        [
            f"--checkpoint={tmp_path / 'checkpoints' / 'run'}",
            "--prompt=the ",
            "--temperature=0",
            "--max_new_tokens=30",
            "--num_samples=1",
            "--device=cpu",
            "--dtype=float32",
        ]
    )
    tok = get_tokenizer("char", CHARS)
    ids = torch.tensor([tok.encode("the ")])
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    assert texts == [tok.decode(hf_greedy(hf, ids, 30)[0].tolist())]


def test_exported_gpt2_tokenizer_gives_tokenizer_py_ids(tmp_path):
    transformers = pytest.importorskip("transformers")
    out = export_run(tmp_path, random_model(**CASES["gpt2_vocab_padded"]))
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ours = get_tokenizer("gpt2")
    texts = [
        "Hello, world! It's a test.",
        "unicode: naïve café, Ελληνικά, русский, 中文字符, 日本語のテキスト, עברית",
        "emoji: 👍🏽 👨‍👩‍👧‍👦 🇯🇵 🤖😀😀",
        "whitespace runs:     five spaces,\t\ttwo tabs,\n\n\nthree newlines,   \n  mixed  ",
        "   leading spaces and trailing ones   ",
        "a literal <|endoftext|> in text, and twice:<|endoftext|><|endoftext|>",
        "<|endoftext|>",
        "contractions: I'm you're it's we'll they've I'd DON'T",
        "spaces before punctuation , . ! ? and split contractions do n't , I 'm",
        "numbers 1234567890 3.14159 1,000,000 and code: def f(x):\n    return x ** 2\n",
        "\u200bzero width, \u00a0no-break space, \r\nCRLF, \x00 nul",
        "",
    ]
    for text in texts:
        ids = ours.encode(text)
        assert hf_tok(text)["input_ids"] == ids, text
        assert hf_tok.decode(ids) == text, text
    assert hf_tok.eos_token_id == hf_tok.bos_token_id == ours.eot_id == 50256
    assert hf_tok.decode([ours.eot_id]) == EOT_TEXT


def test_a_trained_bpe_travels_with_the_export_and_back(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    text = "First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. "
    tok = train_bpe([text * 20], 300, source="data/mine")
    model = random_model(vocab_size=tok.n_vocab, n_embd=32)
    run = tmp_path / "run"
    save_checkpoint(
        {"step": 1, "model": model.state_dict(), "model_config": vars(model.config), "tokenizer": tok.meta()},
        str(run / "best_model.pt"),
    )
    out = str(tmp_path / "exports" / "bpe")
    export.main([f"--checkpoint={run}", f"--out={out}"])
    assert "tokenizer: its own files (tokenizer.json, tokenizer_config.json)" in capsys.readouterr().out
    with open(os.path.join(out, "tokenizer.json")) as fh:
        assert fh.read() == tok.files["tokenizer.json"]
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    sample_text = "Speak, citizen: naïve 🎭 words it never saw."
    assert hf_tok(sample_text)["input_ids"] == tok.encode(sample_text)
    assert hf_tok.decode(tok.document(sample_text)) == sample_text + EOT_TEXT
    back = load_external(out)  # --init_from=the export gets the same tokenizer
    assert tokenizer_identity(back["tokenizer"]) == tokenizer_identity(tok.meta())


# ---- what the folder holds ----------------------------------------------------------------


def test_folder_contents_config_and_weights_layout(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    model = random_model(**CASES["gpt2_vocab_padded"], mlp_hidden=88)
    out = export_run(tmp_path, model)
    assert sorted(os.listdir(out)) == [
        "config.json",
        "generation_config.json",
        "merges.txt",
        "model.safetensors",
        "source_checkpoint.json",
        "tokenizer_config.json",
        "tokenizer_meta.json",
        "vocab.json",
    ]
    with open(os.path.join(out, "config.json")) as fh:
        cfg = json.load(fh)
    assert cfg["model_type"] == "gpt2" and cfg["activation_function"] == "gelu_new"
    assert (cfg["vocab_size"], cfg["n_positions"], cfg["n_ctx"], cfg["n_inner"]) == (50257, 64, 64, 88)
    assert cfg["tie_word_embeddings"] and cfg["bos_token_id"] == cfg["eos_token_id"] == 50256
    with open(os.path.join(out, "generation_config.json")) as fh:
        assert json.load(fh) == {"bos_token_id": 50256, "eos_token_id": 50256}
    # the tokenizer files are the verified GPT-2 files, byte for byte
    vocab_bpe, encoder_json = gpt2_files()
    for ours, theirs in (("merges.txt", vocab_bpe), ("vocab.json", encoder_json)):
        with open(os.path.join(out, ours), "rb") as a, open(theirs, "rb") as b:
            assert a.read() == b.read()
    with safetensors.safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        keys = set(f.keys())
        assert "lm_head.weight" not in keys and "transformer.wte.weight" in keys  # tied: stored once
        sd = model.state_dict()
        torch.testing.assert_close(f.get_tensor("transformer.wte.weight"), sd["wte.weight"][:50257])
        torch.testing.assert_close(
            f.get_tensor("transformer.h.1.mlp.c_fc.weight"), sd["h.1.mlp.c_fc.weight"].t()
        )  # Conv1D: (in, out)
    assert len(keys) == len(sd)  # every weight once, no extras


def test_300m_preset_config_uses_n_inner():
    from model import preset_config

    cfg = export.hf_config(preset_config("300m"), 50256, "bfloat16")
    assert (cfg["n_inner"], cfg["n_positions"], cfg["n_embd"], cfg["n_layer"]) == (2944, 2048, 1024, 24)
    assert export.hf_config(preset_config("gpt2-124m"), 50256, "float32")["n_inner"] is None


def test_bias_false_exports_zero_biases(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    out = export_run(tmp_path, random_model(**CASES["bias_false"]))
    with safetensors.safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        biases = [k for k in f.keys() if k.endswith(".bias")]
        assert len(biases) == 2 * 4 + 4 + 1  # per block: ln_1, c_attn, c_proj, ln_2, c_fc, mlp c_proj
        assert all(not f.get_tensor(k).any() for k in biases)


def test_char_model_writes_its_vocabulary_and_no_hf_tokenizer(tmp_path, capsys):
    out = export_run(tmp_path, random_model(**CASES["bias_false"]))
    assert "no Hugging Face tokenizer fits a character-level model" in capsys.readouterr().out
    assert not {"vocab.json", "merges.txt", "tokenizer_config.json"} & set(os.listdir(out))
    with open(os.path.join(out, "tokenizer_meta.json")) as fh:
        meta = json.load(fh)
    tok = get_tokenizer("char", CHARS)
    assert meta["vocab"] == {c: tok.encode(c)[0] for c in CHARS} | {EOT_TEXT: tok.eot_id}
    assert (meta["tokenizer"], meta["chars"], meta["eot_id"]) == ("char", CHARS, len(CHARS))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_export(tmp_path, dtype):
    transformers = pytest.importorskip("transformers")
    model = random_model(**CASES["mlp_not_4x"])
    out = export_run(tmp_path, model, f"--dtype={dtype}")
    hf = transformers.GPT2LMHeadModel.from_pretrained(out, dtype=torch.float32).eval()
    for name, p in hf.named_parameters():  # the file's values are ours rounded to dtype
        ours = model.state_dict()[name.removeprefix("transformer.").replace("lm_head", "wte")]
        if name.endswith(CONV1D_WEIGHTS):
            ours = ours.t()
        if ours.shape != p.shape:
            ours = ours[: p.shape[0]]
        assert torch.equal(p, ours.to(getattr(torch, dtype)).float()), name
    with open(os.path.join(out, "config.json")) as fh:
        assert json.load(fh)["torch_dtype"] == dtype


# ---- refusals -----------------------------------------------------------------------------


def test_float16_overflow_is_an_error_naming_the_tensor(tmp_path):
    model = random_model(**CASES["bias_false"])
    with torch.no_grad():
        model.h[0].mlp.c_fc.weight[0, 0] = 1e5  # above float16's 65,504
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.mlp\.c_fc\.weight .*bfloat16"):
        export_run(tmp_path, model, "--dtype=float16")
    assert not os.path.exists(tmp_path / "exports" / "m")


def test_field_gpt2_cannot_express_is_an_error_naming_it(tmp_path):
    model = random_model(**CASES["bias_false"])
    ckpt = {
        "model": model.state_dict(),
        "model_config": {**vars(model.config), "rotary": True},
        "tokenizer": get_tokenizer("char", CHARS).meta(),
    }
    with pytest.raises(ValueError, match="model field rotary=True has no GPT-2 or Llama equivalent"):
        export.export(ckpt, str(tmp_path / "x"))
    ckpt["model_config"] = {**vars(model.config), "gelu_approximate": "sigmoid"}
    with pytest.raises(ValueError, match="gelu_approximate='sigmoid'"):
        export.export(ckpt, str(tmp_path / "x"))


def test_existing_out_is_refused_before_loading(tmp_path):
    out = tmp_path / "exports" / "m"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="already exists"):
        export.main(["--checkpoint=does/not/exist.pt", f"--out={out}"])
    assert os.listdir(out) == ["keep.txt"]


def test_a_failed_write_leaves_no_folder(tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    model = random_model(**CASES["bias_false"])

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export.safetensors_torch(), "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        export_run(tmp_path, model)
    assert os.listdir(tmp_path / "exports") == []  # neither the folder nor its temp sibling


# ---- where an export came from, and exports that cannot be written -----------------------


def test_an_export_records_the_digest_of_the_checkpoint_it_came_from(tmp_path):
    model = random_model(**CASES["bias_false"])
    out = export_run(tmp_path, model)
    best = os.path.join(tmp_path, "checkpoints", "run", "best_model.pt")
    with open(os.path.join(out, export.SOURCE_FILE)) as fh:
        record = json.load(fh)
    digest = checkpoint.load_checkpoint(best)["digest"]["content"]
    assert record == {"checkpoint": best, "format": checkpoint.KIND, "step": 7, "sha256": digest}
    assert f"sha256:{digest}" in "\n".join(
        checkpoint.list_checkpoints(os.path.dirname(best))[0]
    )  # the same id


def cli_error(*args) -> str:
    """What `python export.py ARGS` prints when it fails: one line, no traceback."""
    with pytest.raises(SystemExit) as e:
        run_cli(export.main, list(args))
    message = e.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message
    return message


def test_a_corrupt_checkpoint_is_one_line_naming_the_file_and_the_tensor(tmp_path):
    model = random_model(**CASES["bias_false"])
    run = save_run(tmp_path, model)
    best = os.path.join(run, "best_model.pt")
    flip_a_bit(best, model.state_dict()["h.0.mlp.c_fc.weight"])
    assert f"{best} is corrupt: tensor model/h.0.mlp.c_fc.weight does not match" in cli_error(
        f"--checkpoint={run}", f"--out={tmp_path / 'x'}"
    )
    save_run(tmp_path, model)
    flip_a_bit_in_member(best, "data.pkl", at=0)
    assert f"{best} is corrupt: its zip archive fails its own check (Bad CRC-32" in cli_error(
        f"--checkpoint={run}", f"--out={tmp_path / 'x'}"
    )
    assert not os.path.exists(tmp_path / "x")


def test_out_under_a_file_is_one_line_before_loading(tmp_path):
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "a_file" / "sub" / "m"
    assert (
        cli_error("--checkpoint=does/not/exist.pt", f"--out={out}")
        == f"error: cannot create {out}: {tmp_path / 'a_file'} is a file, not a folder; pick another --out"
    )


def test_a_read_only_destination_is_one_line(tmp_path, read_only_dir, monkeypatch):
    run = save_run(tmp_path, random_model(**CASES["bias_false"]))
    out = os.path.join(read_only_dir, "exports", "m")
    assert f"cannot create {out}: {read_only_dir} is not writable" in cli_error(
        f"--checkpoint={run}", f"--out={out}"
    )
    monkeypatch.setattr(export, "check_out", lambda out: None)  # as if it turned read-only after the check
    with pytest.raises(export.ExportWriteError, match=f"could not write {out} .*nothing was left there") as e:
        export.write_folder(out, {"config.json": b"{}"}, {})
    assert "\n" not in str(e.value)
    assert os.listdir(read_only_dir) == []
