"""--optimizer=muon: which parameters Muon trains, the learning rates, the torch it needs."""

import pytest
import torch

from model import GPT, GPTConfig
from training import optimizers
from training.config import ConfigError, TrainConfig


def tiny(bias=True):
    return GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=2, n_head=2, n_embd=16, bias=bias))


def test_muon_trains_the_blocks_matrices_and_adamw_everything_else_once():
    model = tiny()
    adamw, muon = optimizers.build_optimizers(model, TrainConfig(optimizer="muon"))
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = [names[id(p)] for g in muon.param_groups for p in g["params"]]
    in_adamw = [names[id(p)] for g in adamw.param_groups for p in g["params"]]
    assert sorted(in_muon) == sorted(
        f"h.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    )
    assert sorted(in_muon + in_adamw) == sorted(names.values())  # every parameter, once
    assert {"wte.weight", "wpe.weight", "ln_f.weight", "h.0.ln_1.weight", "h.0.attn.c_attn.bias"} <= set(
        in_adamw
    )
    decayed = {names[id(p)] for p in adamw.param_groups[0]["params"]}
    assert decayed == {"wte.weight", "wpe.weight"}  # AdamW's weight decay still on its matrices only
    assert (muon.defaults["lr"], muon.defaults["momentum"], muon.defaults["adjust_lr_fn"]) == (
        0.02,
        0.95,
        "original",
    )


def test_the_rule_is_by_shape_and_place_not_by_name():
    """A Llama-shaped model's fused q,k,v and gate+up are Muon's; an untied head and norms are not."""
    w = torch.zeros(4, 4)
    assert optimizers.is_hidden_matrix("h.3.attn.c_attn.weight", w)  # fused q, k, v: whole
    assert optimizers.is_hidden_matrix("h.0.mlp.c_fc.weight", w)  # fused gate + up: whole
    assert not optimizers.is_hidden_matrix("lm_head.weight", w)
    assert not optimizers.is_hidden_matrix("h.0.ln_1.weight", torch.zeros(4))
    assert not optimizers.is_hidden_matrix("wte.weight", w)


def test_adamw_alone_by_default():
    (adamw,) = optimizers.build_optimizers(tiny(), TrainConfig())
    assert isinstance(adamw, torch.optim.AdamW)


def test_every_group_follows_the_schedule_at_its_own_peak():
    cfg = TrainConfig(optimizer="muon", learning_rate=1e-3, muon_lr=0.05)
    opts = optimizers.build_optimizers(tiny(), cfg)
    optimizers.set_learning_rates(opts, 0.5, cfg)
    assert {g["lr"] for g in opts[0].param_groups} == {5e-4}
    assert {g["lr"] for g in opts[1].param_groups} == {0.025}


def test_muon_on_an_older_torch_is_refused_in_one_line(monkeypatch):
    with pytest.raises(
        ValueError, match=r"needs torch >= 2\.9.*this is torch 2\.8\.0.*drop --optimizer=muon"
    ):
        optimizers.check_optimizer("muon", "2.8.0+cu126")
    optimizers.check_optimizer("adamw", "2.5.1")  # AdamW runs on any supported torch
    optimizers.check_optimizer("muon", "2.10.0.dev20251101")
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(ConfigError, match="needs torch >= 2.9"):
        TrainConfig(optimizer="muon")


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(optimizer="sgd"), "optimizer must be one of adamw, muon"),
        (dict(lr_schedule="linear"), "lr_schedule must be one of cosine, wsd"),
        (dict(decay_fraction=0.0), r"decay_fraction must be in \(0, 1\]"),
        (dict(muon_adjust_lr="rms"), "muon_adjust_lr must be one of original, match_rms_adamw"),
        (dict(muon_momentum=1.0), "muon_momentum in"),
        (dict(muon_ns_steps=0), "muon_ns_steps must be in 1..99"),
    ],
)
def test_bad_optimizer_settings_are_refused(bad, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**bad)


def test_the_start_line_names_both_optimizers_and_the_schedule():
    cfg = TrainConfig(optimizer="muon", lr_schedule="wsd", min_lr=1e-5, warmup_steps=10)
    line = optimizers.describe(cfg)
    assert line.startswith("optimizer Muon on the blocks' matrices: lr 0.02") and "AdamW lr 0.0006" in line
    assert "schedule wsd: warmup 10, constant, linear decay over the last 0.2" in line


def test_a_llama_shape_splits_by_the_same_rule_and_trains():
    """Llama-tiny with an untied head: the fused q,k,v and gate+up matrices go to Muon whole;
    the untied lm_head, the embedding and the RMSNorm weights to AdamW; a step moves both."""
    from model import preset_config

    model = GPT(preset_config("llama-tiny", vocab_size=40, tie_embeddings=False, n_layer=2))
    opts = optimizers.build_optimizers(model, TrainConfig(optimizer="muon"))
    assert set(optimizers.muon_names(model)) == {
        f"h.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    names = {id(p): n for n, p in model.named_parameters()}
    assert "lm_head.weight" in {names[id(p)] for g in opts[0].param_groups for p in g["params"]}
    x = torch.randint(0, 40, (2, 8))
    model(x, x).backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for o in opts:
        o.step()
    assert all(
        not torch.equal(before[n], p)
        for n, p in model.named_parameters()
        if n.endswith(("c_fc.weight", "lm_head.weight"))
    )
