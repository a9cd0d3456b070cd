"""The --dry_run planner against hand arithmetic for the two documented runs, and its
activation formula against what PyTorch actually saves for backward."""
import time

import pytest
import torch

from model import GPT, Block, GPTConfig, count_params, flops_per_token, preset_config
from plan import GiB, block_activation_bytes, format_plan, make_plan, memory_estimate
from train_config import TrainConfig

VOCAB = 50257


def production_8gpu(**kw):
    return TrainConfig(**{**dict(model="1.2b", global_batch_size=256, micro_batch_size=8,
                                 max_steps=590_625, plan_gpus=8, learning_rate=3e-4,
                                 warmup_steps=11_812), **kw})


def train_300m(**kw):
    return TrainConfig(**{**dict(model="300m", global_batch_size=512, micro_batch_size=32,
                                 max_steps=100_000, plan_gpus=4, dropout=0.1, dtype="float16"), **kw})


def test_production_8gpu_figures():
    plan = make_plan(production_8gpu(), 8, VOCAB, None)
    assert plan["accumulation"] == 4  # 256 / (8 micro x 8 GPUs)
    assert plan["tokens_per_step"] == 262_144  # 256 x 1,024
    assert plan["total_tokens"] == 154_828_800_000  # 262,144 x 590,625
    assert plan["epochs"] is None
    fpt = flops_per_token(preset_config("1.2b", vocab_size=VOCAB))
    assert plan["total_flops"] == fpt * 154_828_800_000
    assert 1.2e21 < plan["total_flops"] < 1.22e21
    # 8 x A100 at 40%: 1.211e21 / (312e12 x 0.4 x 8) s, about 14 days, not 8.2 hours.
    a100 = plan["wall_time"]["A100"]
    assert a100["seconds"] == pytest.approx(plan["total_flops"] / (312e12 * 0.4 * 8))
    assert 13.5 < a100["seconds"] / 86400 < 14.5
    h100 = plan["wall_time"]["H100 SXM"]
    assert h100["seconds"] == pytest.approx(plan["total_flops"] / (989e12 * 0.4 * 8))
    assert h100["steps_per_s"] == pytest.approx(590_625 / h100["seconds"])
    assert h100["tokens_per_s"] == pytest.approx(154_828_800_000 / h100["seconds"])
    assert a100["steps_per_s"] < 1  # the document claims ~20 steps/s
    text = format_plan(plan)
    assert "unknown (data not prepared)" in text
    assert "154,828,800,000" in text and "262,144" in text


def test_train_300m_figures():
    plan = make_plan(train_300m(), 4, VOCAB, 12_800_000_000)
    assert plan["accumulation"] == 4  # 512 / (32 x 4)
    assert plan["tokens_per_step"] == 1_048_576  # 512 x 2,048
    assert plan["total_tokens"] == 104_857_600_000  # 105B, not the 12.8B stated
    assert plan["epochs"] == pytest.approx(104_857_600_000 / 12_800_000_000)
    fpt = flops_per_token(preset_config("300m", vocab_size=VOCAB))
    assert plan["total_flops"] == fpt * 104_857_600_000
    w = plan["wall_time"]["A100"]
    assert w["seconds"] == pytest.approx(plan["total_flops"] / (312e12 * 0.4 * 4))
    assert plan["dtype"] == "float16"
    assert "8.192 of 12,800,000,000" in format_plan(plan)


def test_params_match_count_params():
    for cfg in (production_8gpu(), train_300m()):
        plan = make_plan(cfg, cfg.plan_gpus, VOCAB, None)
        mc = cfg.model_config(VOCAB)
        assert plan["params"] == count_params(mc)
        assert plan["params_non_embedding"] == count_params(mc, non_embedding=True)
        assert f"{count_params(mc):,}" in format_plan(plan)


def test_plan_is_fast_for_1_2b():
    t0 = time.perf_counter()
    make_plan(production_8gpu(), 8, VOCAB, None)
    assert time.perf_counter() - t0 < 10


def test_checkpointing_saves_memory_and_flags_cards():
    plan = make_plan(production_8gpu(), 8, VOCAB, None)
    on, off = plan["memory"][True], plan["memory"][False]
    assert on["total"] < off["total"]
    assert on["total"] == sum(on["items"].values())
    assert "DDP gradient buckets" in off["items"]
    # fp32 weights, grads and AdamW are 16 B per stored parameter (padding rows included).
    stored = plan["params"] + (50304 - VOCAB) * 2048
    assert off["items"]["AdamW state (fp32 m, v)"] == 8 * stored
    assert off["total"] > 40 * GiB  # without checkpointing the 1.2B run needs an 80 GB card
    assert "exceeds A100-40GB" in format_plan(plan)
    single = make_plan(production_8gpu(global_batch_size=32), 1, VOCAB, None)
    assert "DDP gradient buckets" not in single["memory"][False]["items"]


def test_logits_counted_as_documented():
    mc = preset_config("1.2b", vocab_size=VOCAB)
    items = memory_estimate(mc, 1, 1, 8, "bfloat16", 1, False)["items"]
    # bf16 padded logits 2 B + fp32 log-softmax 4 B + two fp32 gradients 4 B each.
    assert items["logits + loss"] == 8 * 1024 * (2 * 50304 + 12 * VOCAB)


def test_indivisible_batch_raises_helpful_error():
    with pytest.raises(ValueError, match=r"micro_batch_size can be one of \[1, 2, 4, 8, 16, 32\]"):
        make_plan(production_8gpu(micro_batch_size=12), 8, VOCAB, None)


def _saved_bytes(module, inputs, autocast: bool) -> int:
    """Bytes of distinct storages autograd saves in a forward, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            saved[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            module(*inputs)
    return sum(saved.values())


@pytest.mark.parametrize("autocast", [True, False])
def test_block_formula_matches_saved_tensors(autocast):
    # Dropout 0: with dropout CPU SDPA falls back to the math kernel, unlike CUDA's flash.
    B, T = 3, 40
    cfg = GPTConfig(n_layer=1, n_head=4, n_embd=64, block_size=64, vocab_size=100, mlp_hidden=96)
    block = Block(cfg).train()
    measured = _saved_bytes(block, (torch.randn(B, T, 64),), autocast)
    weight_copies = 2 * sum(p.numel() for p in block.parameters() if p.dim() == 2) if autocast else 0
    assert measured - weight_copies == block_activation_bytes(cfg, B, T, 2 if autocast else 4)


def test_model_formula_matches_saved_tensors():
    B, T, V = 2, 32, 1000
    cfg = GPTConfig(n_layer=3, n_head=4, n_embd=64, block_size=T, vocab_size=V)
    model = GPT(cfg).train()
    idx = torch.randint(0, V, (B, T))
    measured = _saved_bytes(model, (idx, idx), autocast=True)
    n_matrix = sum(p.numel() for p in model.parameters() if p.dim() == 2)
    items = memory_estimate(cfg, 0, n_matrix, B, "bfloat16", 1, False)["items"]
    # Saved for backward: all activations, the weight copies and the fp32 log-softmax;
    # the rest of "logits + loss" is transient (held logits, backward's gradients).
    expected = (items["activations (all blocks)"] + items["16-bit weight copies (autocast)"]
                + 4 * B * T * V)
    assert measured == pytest.approx(expected, rel=0.01)
