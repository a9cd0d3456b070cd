"""The --dry_run planner against hand arithmetic for the two documented runs: batch split,
tokens, FLOPs, wall time, the ways that fit each card. (The memory model it prints is
tested in test_memory.py, how a run resolves in test_resolve.py.)"""

import dataclasses
import os

import pytest

from model import count_params, flops_per_token, preset_config
from training.config import TrainConfig
from training.memory import RESERVE_GIB, GiB, Way, block_activation_bytes, memory_estimate, param_counts
from training.plan import format_plan, make_plan

VOCAB = 50257
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def production_8gpu(**kw):
    return TrainConfig(
        **{
            **dict(
                model="1.2b",
                global_batch_size=256,
                micro_batch_size=8,
                max_steps=590_625,
                plan_gpus=8,
                learning_rate=3e-4,
                warmup_steps=11_812,
            ),
            **kw,
        }
    )


def train_300m(**kw):
    return TrainConfig(
        **{
            **dict(
                model="300m",
                global_batch_size=512,
                micro_batch_size=32,
                max_steps=100_000,
                plan_gpus=4,
                dropout=0.1,
                dtype="float16",
            ),
            **kw,
        }
    )


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
        model_cfg = cfg.model_config(VOCAB)
        assert plan["params"] == count_params(model_cfg)
        assert plan["params_non_embedding"] == count_params(model_cfg, non_embedding=True)
        assert f"{count_params(model_cfg):,}" in format_plan(plan)


def ways_of(plan):
    return {w["way"]: w for w in plan["ways"]}


def test_every_way_is_itemized_and_sharding_divides_the_state():
    plan = make_plan(production_8gpu(), 8, VOCAB, None)
    ways = ways_of(plan)
    stored = plan["params"] + (50304 - VOCAB) * 2048  # padding rows are stored too
    ddp, fsdp = ways[Way("ddp")]["memory"], ways[Way("fsdp")]["memory"]
    assert ddp["total"] == sum(ddp["items"].values())
    assert ddp["items"]["AdamW state (fp32 m, v)"] == 8 * stored  # fp32 m and v: 8 B per parameter
    assert fsdp["items"]["AdamW state (fp32 shards)"] == 8 * stored // 8  # ... over 8 ranks
    assert "DDP gradient buckets" not in ddp["items"]  # gradient_as_bucket_view: none
    assert fsdp["items"]["gradients (unsharded, between micro-steps)"] == 4 * stored  # accumulation 4
    for parallelism in ("ddp", "fsdp"):
        assert ways[Way(parallelism, True)]["memory"]["total"] < ways[Way(parallelism)]["memory"]["total"]
    offload = ways[Way("fsdp", True, True)]["memory"]["items"]
    assert not any("weights" in k or "AdamW" in k for k in offload)  # all in CPU memory
    single = make_plan(production_8gpu(global_batch_size=32), 1, VOCAB, None)
    assert "gradients (unsharded, between micro-steps)" in ways_of(single)[Way("fsdp")]["memory"]["items"]


def test_the_fastest_way_that_fits_each_card_is_marked_with_its_flags():
    plan = make_plan(production_8gpu(), 8, VOCAB, None)
    fits = {w["way"]: w["fits"] for w in plan["ways"]}
    assert fits[Way("fsdp")] == [True, True]  # FSDP fits 8 x 40 GB without activation checkpointing
    order = [w["way"] for w in plan["ways"]]
    for card, way in zip(plan["cards_gib"], plan["fastest"]):
        assert ways_of(plan)[way]["memory"]["total"] + RESERVE_GIB * GiB <= card * GiB
        faster = plan["ways"][: order.index(way)]
        assert all(w["memory"]["total"] + RESERVE_GIB * GiB > card * GiB for w in faster)
    text = format_plan(plan)
    assert "* fastest that fits 40 GiB: --parallelism=" in text and "Checkpoint: 14.56 GB per save" in text
    tight = make_plan(production_8gpu(plan_gpu_memory_gib=(16,)), 8, VOCAB, None)
    assert tight["fastest"] == [Way("fsdp", True)]
    none = make_plan(production_8gpu(plan_gpu_memory_gib=(1,)), 8, VOCAB, None)
    assert none["fastest"] == [None] and "none; lower micro_batch_size" in format_plan(none)


def test_the_table_lists_selective_checkpointing_and_fp8():
    plan = make_plan(production_8gpu(), 8, VOCAB, None)
    order = [w["way"] for w in plan["ways"]]
    for parallelism in ("ddp", "fsdp"):  # fastest first: selective recomputes no matmul, full every block
        assert (
            order.index(Way(parallelism))
            < order.index(Way(parallelism, "selective"))
            < order.index(Way(parallelism, "full"))
        )
    text = format_plan(plan)
    assert (
        "  FSDP + selective checkpointing    " in text and "    selective checkpointing: recomputes" in text
    )
    assert "FP8 (--fp8=True, H100/H200 and newer; off here): float8 matmuls in 88 of 88 linear layers" in text
    on = make_plan(production_8gpu(fp8=True), 8, VOCAB, None)
    assert "float8 matmuls (--fp8)" in format_plan(on) and "; on here)" in format_plan(on)
    assert on["memory"]["total"] < plan["memory"]["total"]  # no 16-bit copies of the float8 weights
    # a card FSDP misses by a little: selective checkpointing is the fastest way that fits
    between = make_plan(production_8gpu(plan_gpu_memory_gib=(22,)), 8, VOCAB, None)
    assert between["fastest"] == [Way("fsdp", "selective")]
    assert (
        "* fastest that fits 22 GiB: --parallelism=fsdp --activation_checkpointing=selective"
        in format_plan(between)
    )


def test_the_16_gb_plan_fits_under_14_gib_as_configured():
    from training.config import load_config

    cfg = load_config([os.path.join(ROOT, "config", "gpt2_1b_16gb.py")])
    plan = make_plan(cfg, 1, VOCAB, None)
    assert plan["params"] == 1_557_611_200
    assert plan["fastest"] == [plan["this_way"]] == [Way("fsdp", True, True)]
    assert plan["memory"]["total"] < 14 * GiB
    assert ways_of(plan)[Way("ddp")]["memory"]["total"] > 16 * GiB  # plain training cannot fit


def test_a_plan_resolves_the_loss_chunk_as_the_run_will():
    compiled = make_plan(production_8gpu(), 8, VOCAB, None)  # a GPU run compiles by default
    eager = make_plan(production_8gpu(compile=False), 8, VOCAB, None)
    chunked = make_plan(production_8gpu(loss_chunk=1024), 8, VOCAB, None)
    assert (compiled["loss_chunk"], compiled["compile"]) == (0, True)
    assert (eager["loss_chunk"], chunked["loss_chunk"]) == (1024, 1024)
    assert "all logits at once; compiled" in format_plan(compiled)
    assert "loss in chunks of 1,024 positions; eager" in format_plan(eager)


def test_indivisible_batch_raises_helpful_error():
    with pytest.raises(ValueError, match=r"micro_batch_size can be one of \[1, 2, 4, 8, 16, 32\]"):
        make_plan(production_8gpu(micro_batch_size=12), 8, VOCAB, None)


def test_a_mixture_plan_shows_what_each_dataset_gives():
    plan = make_plan(production_8gpu(), 8, VOCAB, {"data/web": (0.75, 10**11), "data/code": (0.25, None)})
    web, code = plan["datasets"]
    assert web["tokens"] == 0.75 * 154_828_800_000 and web["epochs"] == pytest.approx(1.161216)
    assert code["tokens"] == 0.25 * 154_828_800_000 and code["epochs"] is None
    text = format_plan(plan)
    assert "data/web: weight 0.75, 116,121,600,000 tokens, 1.161 epochs of 100,000,000,000" in text
    assert "data/code: weight 0.25, 38,707,200,000 tokens, epochs unknown (not prepared)" in text


def test_a_llama_plan_counts_its_own_vocab_gqa_swiglu_and_no_position_table(capsys):
    """llama-3.2-1b planned on GPT-2 data: the preset keeps its 128,256-row vocabulary, the
    parameters are Llama-3.2-1B's published 1,235,814,400, the weights are what GPT on the
    meta device holds, and one block's activations are this hand count: rotary (rotated q
    and k, no wpe), 8 k/v heads of 64, SwiGLU's four 8,192-wide tensors, RMSNorm's rstd."""
    cfg = TrainConfig(
        model="llama-3.2-1b", micro_batch_size=1, global_batch_size=8, plan_gpus=8, max_steps=10
    )
    plan = make_plan(cfg, 8, VOCAB, None)
    assert (plan["vocab_size"], plan["block_size"], plan["params"]) == (128256, 4096, 1_235_814_400)
    assert (
        "rotary (theta 500,000, llama3 scaling x32), RMSNorm (eps 1e-05), SwiGLU MLP" in plan["architecture"]
    )
    model_cfg = preset_config("llama-3.2-1b")
    sb, h = 4096, 2048
    by_hand = (
        2 * 4 * sb * h
        + 2 * 4 * sb  # two norms' fp32 inputs and rstd
        + 2 * sb * h  # c_attn's input
        + 2 * sb * (2048 + 2 * 512)
        + 4 * 32 * sb  # q, k, v (k, v: 8 heads of 64) + logsumexp
        + 2 * sb * (2048 + 512)
        + 2 * 2 * 4096 * 64  # rotated q and k, cos and sin
        + 2 * sb * 2048  # attention output
        + 2 * sb * h  # c_fc's input
        + 4 * 2 * sb * 8192  # [gate; up], silu(gate), the product
    )
    assert block_activation_bytes(model_cfg, 1, 4096, 2) == by_hand
    ddp = ways_of(plan)[Way("ddp")]["memory"]["items"]
    assert ddp["weights (fp32)"] == 4 * 1_235_814_400  # no padding rows: 128,256 = 64 x 2,004
    norms = (2 * 16 + 1) * 2048  # RMSNorm gains, the only 1-D parameters
    assert ddp["16-bit weight copies (autocast)"] == 2 * (1_235_814_400 - norms)  # wte is the head: cast
    untied = make_plan(dataclasses.replace(cfg, model="llama-tiny"), 8, VOCAB, None)
    assert untied["vocab_size"] == VOCAB  # no vocabulary of its own: the data's


def test_an_untied_head_is_cast_and_the_embedding_only_indexed():
    model_cfg = preset_config("llama-tiny", data_vocab=1000)
    untied = dataclasses.replace(model_cfg, tie_embeddings=False)
    items = {}
    for c in (model_cfg, untied):
        n_stored, n_matrix = param_counts(c)
        items[c.tie_embeddings] = memory_estimate(c, n_stored, n_matrix, 4, "bfloat16", 1, Way("ddp"))[
            "items"
        ]
    head = model_cfg.padded_vocab * model_cfg.n_embd
    assert items[False]["weights (fp32)"] - items[True]["weights (fp32)"] == 4 * head
    # wte is no longer cast (only indexed); lm_head is: the same count of 16-bit copies
    assert items[False]["16-bit weight copies (autocast)"] == items[True]["16-bit weight copies (autocast)"]
