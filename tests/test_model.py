import dataclasses
import math

import pytest
import torch

from model import (GPT, PRESETS, GPTConfig, KVCache, compile_model, count_params, cross_entropy_chunk,
                   flops_per_token, preset_config)


def tiny(**kw):
    base = dict(vocab_size=67, block_size=16, n_layer=2, n_head=2, n_embd=32)
    base.update(kw)
    return GPTConfig(**base)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_counts_match_the_built_model(name):
    model_cfg = preset_config(name)
    with torch.device("meta"):
        model = GPT(model_cfg)
    padding = (model_cfg.padded_vocab - model_cfg.vocab_size) * model_cfg.n_embd
    assert sum(p.numel() for p in model.parameters()) - padding == count_params(model_cfg) == model.num_params()


def test_known_counts():
    assert count_params(preset_config("gpt2-124m")) == 124_439_808  # GPT-2 small, as published
    assert count_params(preset_config("gpt2-350m")) == 354_823_168
    assert abs(count_params(preset_config("300m")) - 300e6) / 300e6 < 0.01
    assert abs(count_params(preset_config("1.2b")) - 1.2e9) / 1.2e9 < 0.03
    assert preset_config("1.2b").head_dim in (64, 128)


def test_tied_weights_share_storage_and_are_counted_once():
    model = GPT(tiny())
    names = [n for n, _ in model.named_parameters()]
    assert not any("lm_head" in n for n in names)
    groups = model.optimizer_groups(0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and all(p.dim() < 2 for p in groups[1]["params"])
    assert groups[1]["weight_decay"] == 0.0
    x = torch.randint(0, 67, (1, 8))
    logits, _ = model(x, x)
    logits.sum().backward()  # the head's gradient lands on the embedding matrix
    assert model.wte.weight.grad is not None and model.wte.weight.grad.abs().sum() > 0


def test_causality():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    x = torch.randint(0, 67, (2, 16))
    y = x.clone()
    y[:, 10] = (y[:, 10] + 1) % 67
    a, _ = model(x, x)
    b, _ = model(y, y)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("name,overrides", [("tiny", {}), ("gpt2-124m", {"n_layer": 1}),
                                            ("300m", {"n_layer": 1, "block_size": 64})])
def test_init_loss_is_uniform(name, overrides):
    torch.manual_seed(0)
    model_cfg = preset_config(name, **overrides)
    model = GPT(model_cfg)
    x = torch.randint(0, model_cfg.vocab_size, (4, 32))
    y = torch.randint(0, model_cfg.vocab_size, (4, 32))
    _, loss = model(x, y)
    assert abs(loss.item() - math.log(model_cfg.vocab_size)) < 0.1


def test_padded_ids_are_never_predicted():
    model_cfg = tiny(vocab_size=67)
    assert model_cfg.padded_vocab == 128
    logits, _ = GPT(model_cfg)(torch.zeros(1, 4, dtype=torch.long))
    assert logits.shape[-1] == 67


def test_init_std_and_zero_biases():
    model = GPT(tiny(n_layer=8, n_embd=64))
    assert model.h[0].attn.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.15)
    assert model.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.15)
    assert all(b.abs().sum() == 0 for n, b in model.named_parameters() if n.endswith("bias"))


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = GPT(tiny())
    b = GPT(tiny(activation_checkpointing=True))
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 67, (2, 16))
    for m in (a, b):
        m(x, x)[1].backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), n


def test_kv_cache_matches_full_forward():
    torch.manual_seed(0)
    model_cfg = tiny()
    model = GPT(model_cfg).eval()
    x = torch.randint(0, 67, (2, 16))
    full, _ = model(x, x)
    cache = KVCache(model_cfg, 2, "cpu", torch.float32)
    first, _ = model(x[:, :9], cache=cache)  # prefill
    assert torch.allclose(first[:, 0], full[:, 8], atol=1e-5)
    chunk, _ = model(x[:, 9:12], cache=cache)  # several tokens at once after a prefix
    assert torch.allclose(chunk[:, 0], full[:, 11], atol=1e-5)
    for t in range(12, 16):
        step, _ = model(x[:, t:t + 1], cache=cache)
        assert torch.allclose(step[:, 0], full[:, t], atol=1e-5)
    with pytest.raises(ValueError, match="block_size"):
        model(x[:, :1], cache=cache)


def test_flops_per_token_formula():
    model_cfg = preset_config("gpt2-124m")
    n = count_params(model_cfg) - model_cfg.block_size * model_cfg.n_embd  # matmul weights: all but positions
    assert flops_per_token(model_cfg) == 6 * n + 12 * 12 * 768 * 1024


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="unknown model preset"):
        preset_config("gpt5")


def _loss_and_grads(model_cfg, x, y, autocast_dtype=None):
    torch.manual_seed(0)
    model = GPT(model_cfg)
    with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = model(x, y)[1]
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("chunk", [1, 37, 100, 1000])
def test_chunked_loss_equals_the_plain_loss_and_gradients(chunk):
    model_cfg = GPTConfig(vocab_size=301, block_size=32, n_layer=2, n_head=2, n_embd=32)  # 301: padded to 320
    x, y = torch.randint(0, 301, (4, 32)), torch.randint(0, 301, (4, 32))
    y[0, :7] = -1  # ignored positions count neither in the mean nor in the gradients
    plain, g_plain = _loss_and_grads(model_cfg, x, y)
    chunked, g_chunked = _loss_and_grads(dataclasses.replace(model_cfg, loss_chunk=chunk), x, y)
    assert chunked == pytest.approx(plain, rel=1e-6)
    for name in g_plain:
        scale = g_plain[name].abs().max().clamp(min=1e-12)
        assert ((g_plain[name] - g_chunked[name]).abs().max() / scale) < 1e-5, name
    # bf16 autocast: the same math in 16-bit matmuls, summed in another order
    plain, _ = _loss_and_grads(model_cfg, x, y, torch.bfloat16)
    chunked, _ = _loss_and_grads(dataclasses.replace(model_cfg, loss_chunk=chunk), x, y, torch.bfloat16)
    assert chunked == pytest.approx(plain, rel=1e-3)


def test_chunked_loss_never_keeps_a_full_logits_tensor():
    model_cfg = GPTConfig(vocab_size=500, block_size=64, n_layer=1, n_head=2, n_embd=16, loss_chunk=64)
    model = GPT(model_cfg)
    x = torch.randint(0, 500, (8, 64))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        logits, loss = model(x, x)
    assert logits is None and max(saved) < 8 * 64 * 500 // 4  # nothing near B x T x V is kept for backward
    with torch.no_grad():  # evaluation takes the chunked path too, and needs no gradients
        assert model(x, x)[1].item() == pytest.approx(loss.item(), rel=1e-6)
    model.eval()
    assert model(x[:, :5])[0].shape == (8, 1, 500)  # generation: last position's logits, as before


def test_a_compiled_model_computes_the_chunked_loss_chunk_by_chunk_as_eager_does():
    """compile_model compiles the model and, apart, one chunk of the loss (the compiler would
    otherwise unroll the chunk loop into one graph and hold every chunk's logits at once):
    the loss and every gradient equal eager's, ignored positions and a short last chunk too."""
    model_cfg = GPTConfig(vocab_size=301, block_size=32, n_layer=2, n_head=2, n_embd=32, loss_chunk=48)
    x, y = torch.randint(0, 301, (4, 32)), torch.randint(0, 301, (4, 32))
    y[0, :7] = -1
    plain, g_plain = _loss_and_grads(model_cfg, x, y)
    torch.manual_seed(0)
    model = GPT(model_cfg)
    compiled = compile_model(model)
    assert compiled is not model and model.chunk_step is not cross_entropy_chunk
    loss = compiled(x, y)[1]
    loss.backward()
    assert loss.item() == pytest.approx(plain, rel=1e-6)
    for name, p in model.named_parameters():
        scale = g_plain[name].abs().max().clamp(min=1e-12)
        assert ((g_plain[name] - p.grad).abs().max() / scale) < 1e-5, name


@pytest.mark.parametrize("chunk", [0, 3])
def test_per_position_losses_are_the_plain_cross_entropy_where_scored_and_zero_elsewhere(chunk):
    # reduction="none" is what multiple-choice scoring reads: each scored token's loss
    torch.manual_seed(0)
    model = GPT(tiny(loss_chunk=chunk)).eval()
    x, y = torch.randint(0, 67, (3, 16)), torch.randint(0, 67, (3, 16))
    y[:, :10] = -1
    y[1, 12] = -1
    plain = GPT(tiny()).eval()  # the chunked path returns no logits: an unchunked copy gives them
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        logits = plain(x, y.clamp(min=0))[0]
        want = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, ignore_index=-1, reduction="none")
        logits_out, got = model(x, y, reduction="none")
    assert logits_out is None and got.shape == (3, 16) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got[:, :10] == 0).all() and got[1, 12] == 0 and (got[:, 10:].sum(1) > 0).all()
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'none'"):
        model(x, y, reduction="sum")
