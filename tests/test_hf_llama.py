"""storage/hf_llama.py: Hugging Face Llama and Qwen2 folders, made offline from transformers'
own classes, read into our model, which then computes transformers' logits and greedy tokens;
exports that transformers loads as the same model; and the refusals, each naming its fix."""

import json
import os

import numpy as np
import pytest
import torch
from conftest import QWEN25_3B, tokenizer_folder

os.environ["HF_HUB_OFFLINE"] = "1"  # everything here is local files; never reach for the Hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import evaluate
import export
import sample
import train
from storage import weights
from storage.hf_llama import llama_config
from training.config import load_config

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

SMALL = dict(
    vocab_size=384,
    hidden_size=32,
    intermediate_size=56,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
# Every switch of the new shapes between the two: grouped-query attention in both; Llama 3's
# rope scaling (theta 100 and head_dim 8 put one frequency in each of its three bands) and an
# untied head in Llama; q/k/v biases, a tied head and eps 1e-6 in Qwen2.
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
MODELS = {
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(rope_theta=100.0, rope_scaling=LLAMA3_ROPE, rms_norm_eps=1e-5),
    ),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=10000.0, rms_norm_eps=1e-6)),
}
TIED = {"llama": False, "qwen2": True}
STYLE = {"llama": "llama3", "qwen2": "qwen2.5"}  # conftest.tokenizer_folder's tokenizer files


def hf_model(kind: str, **overrides):
    config_cls, model_cls, extra = MODELS[kind]
    config = getattr(transformers, config_cls)(
        **{**SMALL, **extra, "tie_word_embeddings": TIED[kind], **overrides}
    )
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # weights large enough that greedy decoding does not collapse to one id
        for name, p in hf.named_parameters():
            p.normal_(1.0, 0.1) if "norm" in name else p.normal_(0.0, 0.3)
    return hf


def save(hf, folder, dtype=torch.float32, shard=None):
    hf.to(dtype).save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    tokenizer_folder(folder, STYLE[hf.config.model_type])  # 320 ids: fewer than the embedding's rows
    return str(folder)


def hf_greedy(hf, idx, n):
    hf.generation_config.eos_token_id = None  # all n steps, as sample.py without --stop_at_eot
    with torch.no_grad():
        return hf.generate(
            idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, do_sample=False, pad_token_id=0
        )


def assert_same_model(model, hf):
    idx = torch.randint(0, hf.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.logits(idx), hf(idx).logits, atol=1e-4, rtol=0)
    prompt = idx[:1, :5]
    ours = sample.generate(model, prompt, 20, temperature=0.0)
    assert torch.equal(ours, hf_greedy(hf, prompt, 20))
    assert len(set(ours[0, 5:].tolist())) > 3


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_folder_gives_transformers_logits_and_greedy_tokens(tmp_path, kind):
    """Llama: bf16 weights in shards, read into fp32; Qwen2: one fp32 file."""
    hf = hf_model(kind)
    bf16 = kind == "llama"
    folder = save(hf, tmp_path / kind, torch.bfloat16 if bf16 else torch.float32, "20KB" if bf16 else None)
    if bf16:
        assert os.path.isfile(os.path.join(folder, "model.safetensors.index.json"))
        hf = getattr(transformers, MODELS[kind][1]).from_pretrained(folder, dtype=torch.float32).eval()
    ckpt = weights.load_weights(folder)
    cfg = ckpt["model_config"]
    assert (cfg["n_kv_head"], cfg["norm"], cfg["mlp"], cfg["tie_embeddings"]) == (
        2,
        "rmsnorm",
        "swiglu",
        TIED[kind],
    )
    assert cfg["qkv_bias"] == (kind == "qwen2") and ckpt["source"]["format"] == f"huggingface-{kind}"
    assert all(t.dtype == torch.float32 for t in ckpt["model"].values())
    assert ckpt["model"]["wte.weight"].shape[0] == 384  # a multiple of 64 already: no padding rows
    assert_same_model(weights.build_model(ckpt, "cpu"), hf)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_export_loads_in_transformers_as_the_same_model(tmp_path, kind):
    hf = hf_model(kind)
    ckpt = weights.load_weights(save(hf, tmp_path / "src"))
    export.export(ckpt, str(tmp_path / "out"), source=str(tmp_path / "src"))
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert type(back).__name__ == MODELS[kind][1]
    assert back.config.tie_word_embeddings == TIED[kind]
    with open(tmp_path / "out" / "source_checkpoint.json") as fh:
        assert json.load(fh)["format"] == f"huggingface-{kind}"
    assert_same_model(weights.build_model(ckpt, "cpu"), back)


def test_published_configs_translate():
    llama32_1b = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {**LLAMA3_ROPE, "factor": 32.0, "original_max_position_embeddings": 8192},
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
    }
    cfg = llama_config(llama32_1b, "config.json")
    assert (cfg.n_layer, cfg.n_head, cfg.n_kv_head, cfg.mlp_hidden, cfg.qkv_bias) == (16, 32, 8, 8192, False)
    assert cfg.rope_scaling["factor"] == 32.0 and cfg.tie_embeddings and cfg.norm_eps == 1e-5
    qwen = llama_config(QWEN25_3B, "config.json")
    assert (qwen.n_layer, qwen.n_kv_head, qwen.qkv_bias, qwen.rope_theta, qwen.block_size) == (
        36,
        2,
        True,
        1e6,
        32768,
    )
    assert qwen.rope_scaling is None and qwen.norm_eps == 1e-6


def test_dry_run_reads_only_config_json(tmp_path):
    """--dry_run with --init_from=FOLDER plans the folder's shape (at the run's context) from
    config.json alone: here there are no weights at all."""
    folder = tmp_path / "Qwen2.5-3B"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(QWEN25_3B))
    cfg = load_config([f"--init_from={folder}", "--dry_run", "--block_size=4096", "--plan_gpus=4"])
    plan = train.dry_run_plan(cfg)
    with torch.device("meta"):
        hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**QWEN25_3B))
    assert plan["params"] == sum(p.numel() for p in hf.parameters())  # tied head counted once
    assert (plan["block_size"], plan["n_layer"], plan["vocab_size"]) == (4096, 36, 151936)


def refuse(tmp_path, kind="llama", edit=None, **overrides):
    folder = save(hf_model(kind, **overrides), tmp_path / "hf")
    if edit:
        with open(os.path.join(folder, "config.json")) as fh:
            config = json.load(fh)
        edit(config)
        with open(os.path.join(folder, "config.json"), "w") as fh:
            json.dump(config, fh)
    return folder


@pytest.mark.parametrize(
    "kind, edit, message",
    [
        ("llama", lambda c: c.update(model_type="mistral"), r"the supported ones are gpt2 .*llama .*qwen2"),
        (
            "qwen2",
            lambda c: c.update(architectures=["Qwen2ForSequenceClassification"]),
            "only Qwen2ForCausalLM",
        ),
        ("qwen2", lambda c: c.update(use_sliding_window=True), "use_sliding_window=True is not supported"),
        ("llama", lambda c: c.update(attention_bias=True), "attention_bias=True is not supported .*o_proj"),
        ("llama", lambda c: c.update(hidden_act="gelu"), "hidden_act='gelu' is not supported"),
        (
            "llama",
            lambda c: c.update(rope_parameters={"rope_type": "yarn", "factor": 4.0}),
            "rope type 'yarn'",
        ),
        (
            "llama",
            lambda c: c.update(intermediate_size=60),
            r"gate_proj.weight has shape \(56, 32\) but config",
        ),
    ],
)
def test_unsupported_folder_is_one_line_error(tmp_path, kind, edit, message):
    folder = refuse(tmp_path, kind, edit)
    with pytest.raises(ValueError, match=message):
        weights.load_weights(folder)


def test_missing_shard_is_named(tmp_path):
    folder = save(hf_model("qwen2"), tmp_path / "hf", shard="20KB")
    with open(os.path.join(folder, "model.safetensors.index.json")) as fh:
        shard = sorted(set(json.load(fh)["weight_map"].values()))[1]
    os.remove(os.path.join(folder, shard))
    with pytest.raises(ValueError, match=f"lacks 1 of the .* shards its index names \\({shard}\\); download"):
        weights.load_weights(folder)


def test_continue_pretraining_end_to_end(tmp_path):
    """Issue 22's path at CPU size: a Qwen2 folder; prepare_data.py --tokenizer=FOLDER;
    train.py --init_from=FOLDER for 20 steps; export; transformers loads the export and its
    loss on a batch of the data equals ours."""
    import prepare_data
    from storage.checkpoint import newest_run

    src = save(hf_model("qwen2"), tmp_path / "qwen")
    corpus = tmp_path / "corpus.jsonl"  # one document a line
    lines = (json.dumps({"text": f"Document {i}: the cat sat on mat {i * 7 % 13}."}) for i in range(200))
    corpus.write_text("\n".join(lines) + "\n")
    prepare_data.main(
        [
            f"--input={corpus}",
            f"--tokenizer={src}",
            f"--out_dir={tmp_path / 'data'}",
            "--name=c",
            "--num_proc=1",
        ]
    )
    data = str(tmp_path / "data" / "c")
    args = [
        f"--init_from={src}",
        f"--data_dir={data}",
        f"--out_dir={tmp_path / 'runs'}",
        "--run_name=cont",
        "--block_size=32",  # a rotary model's context is no weight: shorter than the folder's 64
        "--global_batch_size=4",
        "--micro_batch_size=2",
        "--max_steps=20",
        "--warmup_steps=2",
        "--learning_rate=1e-3",
        "--eval_interval=20",
        "--eval_batches=1",
        "--log_interval=10",
        "--save_interval=20",
        "--device=cpu",
        "--dtype=float32",
        "--compile=False",
        "--tensorboard=False",
        "--progress_bar=False",
    ]
    assert train.main(args) == 0
    run = newest_run(str(tmp_path / "runs"))
    ckpt = weights.load_weights(weights.resolve_checkpoint(run))
    assert ckpt["step"] == 20 and ckpt["model_config"]["block_size"] == 32
    export.main([f"--checkpoint={run}", f"--out={tmp_path / 'out'}"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert type(hf).__name__ == "Qwen2ForCausalLM"
    before = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    assert not torch.equal(hf.model.norm.weight, before.model.norm.weight)  # it trained
    with open(os.path.join(data, "meta.json")) as fh:
        ids = np.fromfile(os.path.join(data, "train.bin"), dtype=json.load(fh)["dtype"])[: 2 * 33]
    batch = torch.from_numpy(ids.astype(np.int64)).view(2, 33)
    model = weights.build_model(ckpt, "cpu")
    with torch.no_grad():
        ours = model(batch[:, :-1], batch[:, 1:])
        theirs = hf(batch, labels=batch).loss
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tok.decode(tok("the cat sat")["input_ids"]) == "the cat sat"


def test_sample_cli_gives_transformers_greedy_text(tmp_path):
    hf = hf_model("llama")
    folder = save(hf, tmp_path / "llama")
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    texts = sample.main(
        [
            f"--checkpoint={folder}",
            "--prompt=the cat",
            "--temperature=0",
            "--max_new_tokens=12",
            "--num_samples=1",
            "--device=cpu",
            "--dtype=float32",
        ]
    )
    ids = torch.tensor([tok("the cat")["input_ids"]])  # Llama 3's bos first: a prompt starts a document
    assert ids[0, 0] == tok.bos_token_id
    want = hf_greedy(hf, ids, 12)
    assert texts == ["the cat" + tok.decode(want[0, ids.size(1) :])]


def test_evaluate_cli_scores_as_transformers(tmp_path):
    """evaluate.py on a Llama folder: each choice's log-likelihood as transformers' own model
    and tokenizer give it (Llama 3's bos before the context)."""
    from test_evaluate import write_task

    hf = hf_model("llama")
    folder = save(hf, tmp_path / "llama")
    task = write_task(tmp_path / "t.jsonl", n=4)
    ours = evaluate.main(
        [
            f"--checkpoint={folder}",
            f"--task={task}",
            "--per_example",
            "--device=cpu",
            f"--out={tmp_path / 'r.json'}",
        ]
    )["tasks"]["t"]["per_example"]
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    with open(task) as fh:
        for ex, line in zip(ours, fh):
            row = json.loads(line)
            context = tok(row["ctx"])["input_ids"]  # bos, then the context
            assert context[0] == tok.bos_token_id
            scores = []
            for ending in row["endings"]:
                ids = torch.tensor([context + tok(" " + ending, add_special_tokens=False)["input_ids"]])
                with torch.no_grad():
                    logp = torch.log_softmax(hf(ids).logits[0].double(), dim=-1)
                scores.append(sum(logp[t - 1, ids[0, t]].item() for t in range(len(context), ids.size(1))))
            assert ex["logprobs"] == pytest.approx(scores, rel=1e-4, abs=1e-3)
