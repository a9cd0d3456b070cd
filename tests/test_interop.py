"""interop.py: Hugging Face GPT-2 folders and nanoGPT checkpoints read into our model, which
then computes the source's logits and greedy tokens; and the refusals, each naming its fix."""

import json
import math
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ["HF_HUB_OFFLINE"] = "1"  # everything here is local files; never reach for the Hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import export
import sample
import train
from model import GPT, GPTConfig
from storage import weights
from storage.checkpoint import KIND, load_checkpoint, save_checkpoint
from storage.interop import load_external
from text.tokenizer import get_tokenizer

GEN = 30  # greedy tokens compared, after a 5-token prompt, inside a 64-token context


def our_model(ckpt) -> GPT:
    assert ckpt["kind"] == KIND and ckpt["step"] == 0
    model = GPT(GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])  # strict: every key ours, every shape right
    return model.eval()


def all_logits(model, idx):
    with torch.no_grad():
        return model.logits(idx)


def randomize_(named_params):
    """Every weight random (LayerNorm gains near 1), embeddings unit-norm rows: logits
    varied enough that greedy decoding does not collapse to one id."""
    with torch.no_grad():
        for name, p in named_params:
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
            else:
                p.normal_(1.0 if "ln" in name and name.endswith("weight") else 0.0, 0.1)
            if name.endswith("wte.weight"):
                p.div_(p.norm(dim=1, keepdim=True))


def prompt_ids(vocab, n=5, seed=1):
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


# ---- Hugging Face -> ours ---------------------------------------------------------------


def hf_model(transformers, **overrides):
    torch.manual_seed(0)
    cfg = dict(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=2, n_inner=88)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**cfg, **overrides})).eval()
    randomize_(hf.named_parameters())
    return hf


def hf_greedy(hf, idx, n):
    hf.generation_config.eos_token_id = None  # run all n steps, as sample.py without --stop_at_eot
    with torch.no_grad():
        return hf.generate(
            idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, do_sample=False, pad_token_id=0
        )


def assert_same_as_hf(ckpt, hf):
    model = our_model(ckpt)
    idx = torch.randint(0, hf.config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(all_logits(model, idx), hf(idx).logits, atol=1e-4, rtol=0)
    prompt = prompt_ids(hf.config.vocab_size)
    ours = sample.generate(model, prompt, GEN, temperature=0.0)
    assert torch.equal(ours, hf_greedy(hf, prompt, GEN))
    assert len(set(ours[0, 5:].tolist())) > 3


@pytest.mark.parametrize("activation", ["gelu_new", "gelu_pytorch_tanh", "gelu"])
def test_hf_folder_gives_transformers_logits_and_greedy_tokens(tmp_path, activation):
    transformers = pytest.importorskip("transformers")
    hf = hf_model(transformers, activation_function=activation)
    hf.save_pretrained(tmp_path / "hf")  # model.safetensors, "transformer." names
    ckpt = load_external(str(tmp_path / "hf"))
    assert ckpt["model_config"]["mlp_hidden"] == 88 and ckpt["model_config"]["vocab_size"] == 50257
    assert ckpt["model"]["wte.weight"].shape[0] == 50304  # padded our way, padding rows zero
    assert not ckpt["model"]["wte.weight"][50257:].any()
    assert ckpt["tokenizer"] == get_tokenizer("gpt2").meta()
    assert ckpt["source"]["format"] == "huggingface-gpt2"
    assert_same_as_hf(ckpt, hf)


def test_hub_style_pytorch_model_bin(tmp_path):
    """The layout of the original GPT-2 uploads: pytorch_model.bin, names without
    "transformer.", causal-mask buffers saved beside the weights, and an explicit lm_head."""
    transformers = pytest.importorskip("transformers")
    hf = hf_model(transformers, n_inner=None)
    folder = tmp_path / "gpt2"
    folder.mkdir()
    state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    state["lm_head.weight"] = hf.lm_head.weight.detach().clone()
    torch.save(state, folder / "pytorch_model.bin")
    hf.config.to_json_file(str(folder / "config.json"))
    ckpt = load_external(str(folder / "pytorch_model.bin"))  # the weights file names its folder
    assert ckpt["model_config"]["mlp_hidden"] == 0
    assert_same_as_hf(ckpt, hf)


def test_sample_cli_reads_an_hf_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = hf_model(transformers)
    hf.save_pretrained(tmp_path / "hf")
    texts = sample.main(
        [
            f"--checkpoint={tmp_path / 'hf'}",
            "--prompt=Hello",
            "--temperature=0",
            f"--max_new_tokens={GEN}",
            "--num_samples=1",
            "--device=cpu",
            "--dtype=float32",
        ]
    )
    tok = get_tokenizer("gpt2")
    want = hf_greedy(hf, torch.tensor([tok.encode("Hello")]), GEN)
    assert texts == [tok.decode(want[0].tolist())]


def test_export_then_import_is_the_same_model(tmp_path):
    pytest.importorskip("safetensors")
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=50257, block_size=64, n_layer=2, n_head=2, n_embd=32, mlp_hidden=88)
    ).eval()
    randomize_(model.named_parameters())
    ckpt = {
        "model": model.state_dict(),
        "model_config": vars(model.config),
        "tokenizer": get_tokenizer("gpt2").meta(),
    }
    export.export(ckpt, str(tmp_path / "x"))
    back = load_external(str(tmp_path / "x"))
    for k, v in model.state_dict().items():
        want = v.clone()
        if k == "wte.weight":
            want[50257:] = 0  # the padding rows do not travel
        assert torch.equal(back["model"][k], want), k  # bit-exact both ways in fp32
    assert back["model_config"] == vars(model.config)
    assert back["tokenizer"] == ckpt["tokenizer"]


def test_imported_checkpoint_saves_and_loads_weights_only(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_model(transformers).save_pretrained(tmp_path / "hf")
    path = str(tmp_path / "c.pt")
    save_checkpoint(load_external(str(tmp_path / "hf")), path)
    assert load_checkpoint(path)["source"]["format"] == "huggingface-gpt2"


# ---- Hugging Face refusals ----------------------------------------------------------------


def write_hf_folder(transformers, folder, **overrides):
    hf_model(transformers).save_pretrained(folder)
    with open(folder / "config.json") as fh:
        cfg = json.load(fh)
    cfg.update(overrides)
    with open(folder / "config.json", "w") as fh:
        json.dump(cfg, fh)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"activation_function": "relu"}, "activation_function='relu' is not supported"),
        ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon=1e-06 is not supported"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings=False"),
        (
            {"model_type": "gpt_neox"},
            r"model_type=.gpt_neox.; the supported ones are gpt2 \(GPT2LMHeadModel\), llama",
        ),
        ({"n_inner": 96}, r"h\.0\.mlp\.c_fc\.weight has shape \(88, 32\) but its config needs \(96, 32\)"),
        ({"n_inner": 2.5}, "n_inner=2.5 must be a positive whole number"),
        ({"vocab_size": 50000}, "not GPT-2's 50257"),
    ],
)
def test_hf_config_that_cannot_be_computed_the_same_is_an_error(tmp_path, override, message):
    transformers = pytest.importorskip("transformers")
    write_hf_folder(transformers, tmp_path / "hf", **override)
    with pytest.raises(ValueError, match=message):
        load_external(str(tmp_path / "hf"))


def test_hf_folder_without_weights_or_with_another_vocabulary(tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "hf"
    write_hf_folder(transformers, folder)
    with open(folder / "vocab.json", "w") as fh:
        json.dump({"a": 0, "b": 1}, fh)
    with pytest.raises(ValueError, match="vocab.json is not GPT-2's vocabulary"):
        load_external(str(folder))
    os.remove(folder / "vocab.json")
    os.remove(folder / "model.safetensors")
    with pytest.raises(ValueError, match="no model.safetensors or pytorch_model.bin"):
        load_external(str(folder))


def test_untied_head_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = hf_model(transformers)
    folder = tmp_path / "hf"
    folder.mkdir()
    state = dict(hf.state_dict(), **{"lm_head.weight": torch.randn(50257, 32)})
    torch.save(state, folder / "pytorch_model.bin")
    hf.config.to_json_file(str(folder / "config.json"))
    with pytest.raises(ValueError, match="lm_head.weight"):
        load_external(str(folder))


# ---- nanoGPT -> ours --------------------------------------------------------------------


def nanogpt_checkpoint(
    path,
    vocab=50304,
    bias=True,
    n_embd=32,
    n_layer=2,
    n_head=2,
    block=64,
    prefix="",
    dataset="openwebtext",
    mask_buffer=False,
):
    """A ckpt.pt as nanoGPT's train.py saves it: nn.Linear weights, "transformer." names,
    lm_head sharing wte's tensor, model_args / iter_num / best_val_loss / config."""
    torch.manual_seed(3)
    C, sd = n_embd, {}

    def add(name, *shape):
        sd[name] = torch.empty(*shape)

    add("transformer.wte.weight", vocab, C)
    add("transformer.wpe.weight", block, C)
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            add(p + ln + ".weight", C)
            if bias:
                add(p + ln + ".bias", C)
        for name, out_f, in_f in (
            ("attn.c_attn", 3 * C, C),
            ("attn.c_proj", C, C),
            ("mlp.c_fc", 4 * C, C),
            ("mlp.c_proj", C, 4 * C),
        ):
            add(p + name + ".weight", out_f, in_f)
            if bias:
                add(p + name + ".bias", out_f)
    add("transformer.ln_f.weight", C)
    if bias:
        add("transformer.ln_f.bias", C)
    randomize_(sd.items())
    sd["lm_head.weight"] = sd["transformer.wte.weight"]  # tied: one tensor under two names
    for i in range(n_layer if mask_buffer else 0):  # saved when flash attention is unavailable
        sd[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(block, block)).view(1, 1, block, block)
    model_args = dict(
        n_layer=n_layer, n_head=n_head, n_embd=C, block_size=block, bias=bias, vocab_size=vocab, dropout=0.0
    )
    config = dict(
        dataset=dataset,
        batch_size=12,
        learning_rate=6e-4,
        compile=True,
        out_dir="out",
        dtype="bfloat16",
        decay_lr=True,
        wandb_run_name="gpt2",
    )
    param = torch.nn.Parameter(torch.zeros(3))  # an AdamW state as its checkpoints carry one
    optimizer = torch.optim.AdamW([param], lr=6e-4, betas=(0.9, 0.95))
    param.grad = torch.ones(3)
    optimizer.step()
    torch.save(
        {
            "model": {prefix + k: v for k, v in sd.items()},
            "optimizer": optimizer.state_dict(),
            "model_args": model_args,
            "iter_num": 5000,
            "best_val_loss": torch.tensor(2.5),
            "config": config,
        },
        path,
    )
    return sd, model_args


def nanogpt_logits(sd, args, idx):
    """nanoGPT's forward from its math (its manual attention path, exact GELU)."""
    C, nh = args["n_embd"], args["n_head"]
    B, T = idx.shape

    def ln(x, p):
        return F.layer_norm(x, (C,), sd[p + ".weight"], sd.get(p + ".bias"), 1e-5)

    def linear(x, p):
        return F.linear(x, sd[p + ".weight"], sd.get(p + ".bias"))

    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(args["n_layer"]):
        p = f"transformer.h.{i}."
        q, k, v = linear(ln(x, p + "ln_1"), p + "attn.c_attn").split(C, dim=2)
        q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // nh)
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        x = x + linear((att @ v).transpose(1, 2).reshape(B, T, C), p + "attn.c_proj")
        x = x + linear(F.gelu(linear(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    return ln(x, "transformer.ln_f") @ sd["lm_head.weight"].t()


def assert_same_as_nanogpt(ckpt, sd, args, vocab):
    """Logits over the real vocab within 1e-4, and greedy tokens identical. (nanoGPT's own
    argmax also ranges over its 47 padding ids; a trained model gives them no mass.)"""
    model = our_model(ckpt)
    idx = torch.randint(0, vocab, (3, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(
            all_logits(model, idx), nanogpt_logits(sd, args, idx)[..., :vocab], atol=1e-4, rtol=0
        )
        want = prompt_ids(vocab)
        for _ in range(GEN):
            nxt = nanogpt_logits(sd, args, want[:, -args["block_size"] :])[:, -1, :vocab].argmax(-1)
            want = torch.cat([want, nxt[:, None]], dim=1)
    ours = sample.generate(model, prompt_ids(vocab), GEN, temperature=0.0)
    assert torch.equal(ours, want)
    assert len(set(ours[0, 5:].tolist())) > 3


@pytest.mark.parametrize(
    "variant",
    [
        dict(),  # GPT-2 tokens, vocab padded to 50,304 by nanoGPT itself
        dict(
            vocab=50257, bias=False, prefix="_orig_mod.", mask_buffer=True
        ),  # from_pretrained size, compiled
    ],
)
def test_nanogpt_checkpoint_gives_nanogpt_logits_and_greedy_tokens(tmp_path, variant):
    path = str(tmp_path / "out" / "ckpt.pt")
    os.makedirs(os.path.dirname(path))
    sd, args = nanogpt_checkpoint(path, **variant)
    ckpt = load_external(path)
    cfg = ckpt["model_config"]
    assert (cfg["vocab_size"], cfg["bias"], cfg["gelu_approximate"]) == (50257, args["bias"], "none")
    assert ckpt["tokenizer"] == get_tokenizer("gpt2").meta()
    assert ckpt["source"] == {
        "format": "nanogpt",
        "path": path,
        "iter_num": 5000,
        "best_val_loss": 2.5,
        "dataset": "openwebtext",
    }
    assert_same_as_nanogpt(ckpt, sd, args, 50257)


def test_nanogpt_char_model_reads_meta_pkl_from_its_dataset(tmp_path):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    chars = sorted(set(text))
    repo = tmp_path / "nanoGPT"
    (repo / "data" / "shakespeare_char").mkdir(parents=True)
    (repo / "out-shakespeare-char").mkdir()
    with open(repo / "data" / "shakespeare_char" / "meta.pkl", "wb") as fh:  # as nanoGPT's prepare.py
        pickle.dump(
            {
                "vocab_size": len(chars),
                "itos": dict(enumerate(chars)),
                "stoi": {c: i for i, c in enumerate(chars)},
            },
            fh,
        )
    path = str(repo / "out-shakespeare-char" / "ckpt.pt")
    sd, args = nanogpt_checkpoint(path, vocab=len(chars), dataset="shakespeare_char")
    ckpt = load_external(path)
    tok = get_tokenizer("char", "".join(chars))
    assert ckpt["tokenizer"] == tok.meta() and ckpt["model_config"]["vocab_size"] == len(chars)
    assert tok.encode(text) == [chars.index(c) for c in text]  # nanoGPT's ids are ours
    assert_same_as_nanogpt(ckpt, sd, args, len(chars))
    # and sample.py takes the nanoGPT out_dir as it is
    texts = sample.main(
        [
            f"--checkpoint={repo / 'out-shakespeare-char'}",
            "--prompt=First",
            "--temperature=0",
            "--max_new_tokens=5",
            "--num_samples=1",
            "--device=cpu",
        ]
    )
    assert texts[0].startswith("First") and len(texts[0]) == 10
    # and train.py fine-tunes it on nanoGPT's own prepared data (train.bin, val.bin, meta.pkl)
    ids = np.array([chars.index(c) for c in text * 20], dtype=np.uint16)
    ids.tofile(repo / "data" / "shakespeare_char" / "train.bin")
    ids[:200].tofile(repo / "data" / "shakespeare_char" / "val.bin")
    # (given its out_dir, as sample.py is)
    run = [
        f"--data_dir={repo / 'data' / 'shakespeare_char'}",
        f"--out_dir={tmp_path / 'ck'}",
        "--run_name=ft",
        "--global_batch_size=2",
        "--micro_batch_size=2",
        "--max_steps=2",
        "--warmup_steps=0",
        "--eval_batches=1",
        "--device=cpu",
        "--compile=False",
        "--tensorboard=False",
    ]
    with pytest.raises(
        ValueError,
        match=r"--resume=.*out-shakespeare-char is a nanogpt checkpoint: it has no optimizer "
        r"state or step of this trainer to continue; start from its weights with "
        r"--init_from=.*out-shakespeare-char$",
    ):
        train.main(run + [f"--resume={repo / 'out-shakespeare-char'}"])
    assert train.main(run + [f"--init_from={repo / 'out-shakespeare-char'}"]) == 0
    start = json.loads(open(tmp_path / "ck" / "ft" / "metrics.jsonl").readline())
    assert start["model_config"]["vocab_size"] == len(chars) + 1  # our end-of-text id joins, in a padding row
    assert start["model_config"]["gelu_approximate"] == "none"  # nanoGPT's exact GELU, kept


def test_nanogpt_char_model_without_meta_pkl_names_it(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    nanogpt_checkpoint(path, vocab=65, dataset="shakespeare_char")
    with pytest.raises(ValueError, match="copy nanoGPT's data/<dataset>/meta.pkl next to the checkpoint"):
        load_external(path)


def test_meta_pkl_that_would_run_code_is_refused(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    nanogpt_checkpoint(path, vocab=65)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "meta.pkl", "wb") as fh:
        pickle.dump({"itos": Evil()}, fh)
    with pytest.raises(ValueError, match="cannot be read as nanoGPT's meta.pkl .*posix.system"):
        load_external(path)


def test_nanogpt_to_hf_export_uses_exact_gelu(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = str(tmp_path / "ckpt.pt")
    sd, args = nanogpt_checkpoint(path)
    export.main([f"--checkpoint={path}", f"--out={tmp_path / 'hf'}"])
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.activation_function == "gelu"
    idx = torch.randint(0, 50257, (2, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(
            hf(idx).logits, nanogpt_logits(sd, args, idx)[..., :50257], atol=1e-4, rtol=0
        )


# ---- what is not external --------------------------------------------------------------


def test_load_external_is_none_for_everything_else(tmp_path):
    model = GPT(GPTConfig(vocab_size=38, block_size=8, n_layer=1, n_head=1, n_embd=8))
    ours = str(tmp_path / "run" / "best_model.pt")
    save_checkpoint(
        {
            "step": 3,
            "model": model.state_dict(),
            "model_config": vars(model.config),
            "optimizer": {},
            "tokenizer": {},
        },
        ours,
    )
    (tmp_path / "run" / "config.json").write_text(json.dumps({"run_name": "run", "model": "tiny"}))
    (tmp_path / "notes.txt").write_text("hello")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    for path in (
        ours,
        str(tmp_path / "run"),
        str(tmp_path / "notes.txt"),
        str(tmp_path / "other.pt"),
        str(tmp_path / "missing.pt"),
    ):
        assert load_external(path) is None, path
    assert weights.resolve_checkpoint(str(tmp_path / "run")) == ours  # a run folder, not an HF one
