import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from model import (
    GPT,
    PRESETS,
    ChunkedCrossEntropy,
    GPTConfig,
    KVCache,
    compile_model,
    count_params,
    cross_entropy_chunk,
    float8_layers,
    flops_per_token,
    preset_config,
)


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
    assert (
        sum(p.numel() for p in model.parameters()) - padding == count_params(model_cfg) == model.num_params()
    )


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


@pytest.mark.parametrize(
    "name,overrides",
    [("tiny", {}), ("gpt2-124m", {"n_layer": 1}), ("300m", {"n_layer": 1, "block_size": 64})],
)
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


@pytest.mark.parametrize("how", ["full", "selective", True])
@pytest.mark.parametrize("autocast", [False, True])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(how, autocast):
    """Recomputing in backward changes nothing a step computes: the loss and every gradient
    equal no checkpointing's, dropout included (its masks are replayed), in fp32 and under
    bf16 autocast. True is an older config's "full"."""
    x = torch.randint(0, 67, (2, 16))
    results = []
    for checkpointing in (False, how):
        torch.manual_seed(0)
        model = GPT(tiny(dropout=0.1, activation_checkpointing=checkpointing))
        assert model.config.activation_checkpointing == ("full" if checkpointing is True else checkpointing)
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(x, x)[1]
        loss.backward()
        results.append((loss.item(), {n: p.grad for n, p in model.named_parameters()}))
    (plain_loss, plain), (loss, grads) = results
    assert loss == plain_loss
    for name in plain:
        assert torch.allclose(plain[name], grads[name], atol=1e-6), name


def test_activation_checkpointing_takes_full_selective_or_false():
    assert [
        tiny(activation_checkpointing=v).activation_checkpointing for v in (False, True, "full", "selective")
    ] == [False, "full", "full", "selective"]
    with pytest.raises(
        ValueError, match=r"must be one of False, 'full', 'selective' \(True means 'full'\), got 'some'"
    ):
        tiny(activation_checkpointing="some")


def test_fp8_trains_the_large_block_layers_and_never_the_head():
    """--fp8's layers (torchao's advice for its tensorwise recipe: dimensions multiples of 16,
    small layers left in bf16): all four of each 1.2B block; in the 124M the two whose output
    is over 1,024 wide (attention's and the MLP's 768-wide projections are too small); the
    tied head, an embedding matrix through F.linear, never."""

    def layers(name):
        with torch.device("meta"):
            return float8_layers(GPT(preset_config(name)))

    big = layers("1.2b")
    assert len(big) == 4 * 22 and {n.split(".", 2)[2] for n in big} == {
        "attn.c_attn",
        "attn.c_proj",
        "mlp.c_fc",
        "mlp.c_proj",
    }
    assert layers("gpt2-124m") == [f"h.{i}.{n}" for i in range(12) for n in ("attn.c_attn", "mlp.c_fc")]
    assert not any("wte" in n or "wpe" in n or "ln" in n for n in big)


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
        step, _ = model(x[:, t : t + 1], cache=cache)
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


def _relative_error(got, want) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


def test_chunked_loss_under_a_grad_scaler_with_accumulation_equals_the_plain_loss():
    """As train_step runs it: two micro-batches, each loss / 2 scaled by a GradScaler before
    backward, then unscaled. Chunked and all at once give the same losses and gradients
    (fp32: to 1e-5 of the largest), the padded vocab and ignored positions included."""
    model_cfg = GPTConfig(vocab_size=301, block_size=32, n_layer=2, n_head=2, n_embd=32)  # 301: padded to 320
    batches = [(torch.randint(0, 301, (2, 32)), torch.randint(0, 301, (2, 32))) for _ in range(2)]
    batches[1][1][0, 5:20] = -1
    runs = []
    for chunk in (0, 24):
        torch.manual_seed(0)
        model = GPT(dataclasses.replace(model_cfg, loss_chunk=chunk))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
        losses = []
        for x, y in batches:
            loss = model(x, y)[1]
            losses.append(loss.item())
            scaler.scale(loss / len(batches)).backward()
        scaler.unscale_(optimizer)
        runs.append((losses, {n: p.grad for n, p in model.named_parameters()}))
    (plain_losses, plain), (losses, chunked) = runs
    assert losses == pytest.approx(plain_losses, rel=1e-6)
    for name in plain:
        assert _relative_error(chunked[name], plain[name]) < 1e-5, name


def test_chunked_loss_in_fp16_keeps_gradients_that_loss_scaling_keeps():
    """fp16 under a loss scale of 2^16, 8,192 positions over a 3,001-word vocab: with the
    logits' gradient divided by the positions before the fp16 matmuls (as this loss once
    did), most of it would fall below fp16's smallest value, 6e-8, because a forward pass
    sees no loss scale. Kept in [-1, 1] it stays as close to the fp32 gradients as the
    unchunked path's, whose backward the loss scale reaches."""
    torch.manual_seed(0)
    n, vocab = 8192, 3001
    hidden0, weight0 = torch.randn(n, 16), torch.randn(3008, 16) * 0.1  # near-uniform logits: small softmax
    targets = torch.randint(0, vocab, (n,))
    targets[:100] = -1

    def grads(loss_fn, fp16, scale=2.0**16):
        hidden, weight = hidden0.clone().requires_grad_(), weight0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.float16, enabled=fp16):
            loss = loss_fn(hidden, weight)
        (loss * scale).backward()
        return hidden.grad / scale, weight.grad / scale

    def plain(hidden, weight):
        return F.cross_entropy(F.linear(hidden, weight)[:, :vocab].float(), targets, ignore_index=-1)

    def chunked(hidden, weight):
        return ChunkedCrossEntropy.apply(hidden, weight, targets, vocab, 1024, cross_entropy_chunk)

    truth = grads(plain, fp16=False)
    chunked_fp16, plain_fp16 = grads(chunked, fp16=True), grads(plain, fp16=True)
    for got, reference, want in zip(chunked_fp16, plain_fp16, truth):
        assert _relative_error(got, want) < max(2e-3, 1.5 * _relative_error(reference, want))
