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
    n_linear,
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
    model.logits(x).sum().backward()  # the head's gradient lands on the embedding matrix
    assert model.wte.weight.grad is not None and model.wte.weight.grad.abs().sum() > 0


def test_causality():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    x = torch.randint(0, 67, (2, 16))
    y = x.clone()
    y[:, 10] = (y[:, 10] + 1) % 67
    a, b = model.logits(x), model.logits(y)
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
    loss = model(x, y)
    assert abs(loss.item() - math.log(model_cfg.vocab_size)) < 0.1


def test_padded_ids_are_never_predicted():
    model_cfg = tiny(vocab_size=67)
    assert model_cfg.padded_vocab == 128
    model = GPT(model_cfg)
    assert model.logits(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 67)
    assert model.next_token_logits(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 67)


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
            loss = model(x, x)
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
    full = model.logits(x)
    cache = KVCache(model_cfg, 2, "cpu", torch.float32)
    first = model.next_token_logits(x[:, :9], cache)  # prefill
    assert torch.allclose(first, full[:, 8], atol=1e-5)
    chunk = model.next_token_logits(x[:, 9:12], cache)  # several tokens at once after a prefix
    assert torch.allclose(chunk, full[:, 11], atol=1e-5)
    for t in range(12, 16):
        step = model.next_token_logits(x[:, t : t + 1], cache)
        assert torch.allclose(step, full[:, t], atol=1e-5)
    with pytest.raises(ValueError, match="block_size"):
        model.next_token_logits(x[:, :1], cache)


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
        loss = model(x, y)
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
        loss = model(x, x)
    assert loss.shape == () and max(saved) < 8 * 64 * 500 // 4  # nothing near B x T x V is kept for backward
    with torch.no_grad():  # evaluation takes the chunked path too, and needs no gradients
        assert model(x, x).item() == pytest.approx(loss.item(), rel=1e-6)


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
    loss = compiled(x, y)
    loss.backward()
    assert loss.item() == pytest.approx(plain, rel=1e-6)
    for name, p in model.named_parameters():
        scale = g_plain[name].abs().max().clamp(min=1e-12)
        assert ((g_plain[name] - p.grad).abs().max() / scale) < 1e-5, name


@pytest.mark.parametrize("chunk", [0, 3])
def test_per_position_losses_are_the_plain_cross_entropy_where_scored_and_zero_elsewhere(chunk):
    # position_losses is what multiple-choice scoring reads: each scored token's loss
    torch.manual_seed(0)
    model = GPT(tiny(loss_chunk=chunk)).eval()
    x, y = torch.randint(0, 67, (3, 16)), torch.randint(0, 67, (3, 16))
    y[:, :10] = -1
    y[1, 12] = -1
    with torch.no_grad():
        logits = model.logits(x)
        want = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, ignore_index=-1, reduction="none")
        got = model.position_losses(x, y)
    assert got.shape == (3, 16) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got[:, :10] == 0).all() and got[1, 12] == 0 and (got[:, 10:].sum(1) > 0).all()


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
            loss = model(x, y)
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


# ---- Llama and Qwen shapes ------------------------------------------------------------------

GPT2_KEYS = {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"} | {
    f"h.0.{m}.{p}"
    for m in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    for p in ("weight", "bias")
}


def test_a_default_config_is_gpt2_with_nothing_new():
    """A GPTConfig of GPT-2's fields builds GPT-2's modules and state dict (no rope, no
    lm_head, LayerNorm, GELU, every head its own k/v), and computes what a forward written
    out by hand from those weights computes."""
    model_cfg = tiny(n_layer=1)
    torch.manual_seed(0)
    model = GPT(model_cfg).eval()
    sd = model.state_dict()
    assert set(sd) == GPT2_KEYS
    assert sd["h.0.attn.c_attn.weight"].shape == (3 * 32, 32) and sd["h.0.mlp.c_fc.weight"].shape == (128, 32)
    assert isinstance(model.ln_f, torch.nn.LayerNorm) and not hasattr(model, "lm_head")
    idx = torch.randint(0, 67, (2, 10))

    def ln(x, p):
        return F.layer_norm(x, (32,), sd[p + ".weight"], sd[p + ".bias"], 1e-5)

    def lin(x, p):
        return x @ sd[p + ".weight"].T + sd[p + ".bias"]

    x = sd["wte.weight"][idx] + sd["wpe.weight"][:10]
    q, k, v = lin(ln(x, "h.0.ln_1"), "h.0.attn.c_attn").split(32, dim=-1)
    q, k, v = (t.view(2, 10, 2, 16).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-1, -2) / 4.0).masked_fill(torch.ones(10, 10).triu(1).bool(), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 10, 32)
    x = x + lin(y, "h.0.attn.c_proj")
    h = F.gelu(lin(ln(x, "h.0.ln_2"), "h.0.mlp.c_fc"), approximate="tanh")
    x = x + lin(h, "h.0.mlp.c_proj")
    want = ln(x, "ln_f") @ sd["wte.weight"][:67].T
    with torch.no_grad():
        torch.testing.assert_close(model.logits(idx), want, atol=1e-5, rtol=1e-5)


LLAMA3_SCALING = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=16,  # below the 40 positions compared: the scaling counts
)
# (transformers class names, their config, ours): every switch of the Llama family
HF_CASES = {
    "llama3-gqa-untied": (
        ("LlamaConfig", "LlamaForCausalLM"),
        dict(
            num_key_value_heads=2,
            rope_theta=500000.0,
            rope_scaling=LLAMA3_SCALING,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
        dict(
            n_kv_head=2, rope_theta=500000.0, rope_scaling=LLAMA3_SCALING, norm_eps=1e-5, tie_embeddings=False
        ),
    ),
    "qwen2-qkv-bias-tied": (
        ("Qwen2Config", "Qwen2ForCausalLM"),
        dict(num_key_value_heads=1, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True),
        dict(n_kv_head=1, rope_theta=1e6, norm_eps=1e-6, qkv_bias=True),
    ),
}


def llama_tiny(**kw):
    base = dict(
        vocab_size=100,
        block_size=64,
        n_layer=2,
        n_head=4,
        n_embd=64,
        mlp_hidden=96,
        bias=False,
        norm="rmsnorm",
        mlp="swiglu",
        rope_theta=10000.0,
    )
    return GPTConfig(**{**base, **kw})


def ours_from_hf(sd: dict, model_cfg: GPTConfig) -> dict:
    """Our state dict from a transformers Llama/Qwen2 one, by model.py's naming: q, k, v rows
    stacked into c_attn, [gate; up] into c_fc."""
    out = {"wte.weight": sd["model.embed_tokens.weight"], "ln_f.weight": sd["model.norm.weight"]}
    for i in range(model_cfg.n_layer):
        hf, our = f"model.layers.{i}.", f"h.{i}."
        out[our + "ln_1.weight"] = sd[hf + "input_layernorm.weight"]
        out[our + "ln_2.weight"] = sd[hf + "post_attention_layernorm.weight"]
        for p in ("weight", "bias") if model_cfg.has_qkv_bias else ("weight",):
            out[our + f"attn.c_attn.{p}"] = torch.cat([sd[hf + f"self_attn.{n}_proj.{p}"] for n in "qkv"])
        out[our + "attn.c_proj.weight"] = sd[hf + "self_attn.o_proj.weight"]
        out[our + "mlp.c_fc.weight"] = torch.cat(
            [sd[hf + "mlp.gate_proj.weight"], sd[hf + "mlp.up_proj.weight"]]
        )
        out[our + "mlp.c_proj.weight"] = sd[hf + "mlp.down_proj.weight"]
    if not model_cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_llama_and_qwen_shapes_compute_transformers_logits(case):
    transformers = pytest.importorskip("transformers")
    (config_cls, model_cls), hf_fields, ours = HF_CASES[case]
    hf_cfg = getattr(transformers, config_cls)(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        **{k: dict(v) if isinstance(v, dict) else v for k, v in hf_fields.items()},  # HF edits its dicts
    )
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)(hf_cfg).eval()
    model_cfg = llama_tiny(vocab_size=128, **ours)
    model = GPT(model_cfg).eval()
    model.load_state_dict(ours_from_hf(hf.state_dict(), model_cfg))  # strict: the same parameters
    assert model.num_params() == hf.num_parameters()
    idx = torch.randint(0, 128, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(model.logits(idx), hf(idx).logits, atol=1e-4, rtol=0)


LLAMA_SHAPES = {
    "llama3-gqa-untied": dict(n_kv_head=2, rope_scaling=LLAMA3_SCALING, tie_embeddings=False),
    "qwen2-mqa-bias": dict(n_kv_head=1, qkv_bias=True, norm_eps=1e-6),
}


@pytest.mark.parametrize("shape", sorted(LLAMA_SHAPES))
def test_llama_shapes_kv_cache_matches_full_forward(shape):
    torch.manual_seed(0)
    model_cfg = llama_tiny(block_size=16, **LLAMA_SHAPES[shape])
    model = GPT(model_cfg).eval()
    x = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        full = model.logits(x)
        cache = KVCache(model_cfg, 2, "cpu", torch.float32)
        assert cache.k[0].shape == (2, model_cfg.kv_heads, 16, 16)  # only the k/v heads are cached
        torch.testing.assert_close(model.next_token_logits(x[:, :9], cache), full[:, 8], atol=1e-5, rtol=0)
        torch.testing.assert_close(model.next_token_logits(x[:, 9:12], cache), full[:, 11], atol=1e-5, rtol=0)
        for t in range(12, 16):
            torch.testing.assert_close(
                model.next_token_logits(x[:, t : t + 1], cache), full[:, t], atol=1e-5, rtol=0
            )


@pytest.mark.parametrize("shape", sorted(LLAMA_SHAPES))
def test_llama_shapes_chunked_loss_and_checkpointing_give_the_plain_loss_and_gradients(shape):
    """The untied head takes the chunked loss's gradient (lm_head, not wte), and full and
    selective checkpointing recompute rope, RMSNorm and SwiGLU to the same gradients."""
    model_cfg = llama_tiny(vocab_size=301, block_size=32, **LLAMA_SHAPES[shape])
    x, y = torch.randint(0, 301, (4, 32)), torch.randint(0, 301, (4, 32))
    y[0, :7] = -1
    plain, g_plain = _loss_and_grads(model_cfg, x, y)
    for variant in (
        dict(loss_chunk=37),
        dict(activation_checkpointing="full"),
        dict(activation_checkpointing="selective"),
    ):
        loss, grads = _loss_and_grads(dataclasses.replace(model_cfg, **variant), x, y)
        assert loss == pytest.approx(plain, rel=1e-6), variant
        for name in g_plain:
            assert _relative_error(grads[name], g_plain[name]) < 1e-5, (variant, name)
    if not model_cfg.tie_embeddings:
        assert g_plain["lm_head.weight"][301:].abs().sum() == 0  # padding rows never learn
        assert g_plain["wte.weight"].abs().sum() > 0


def test_an_untied_head_is_its_own_counted_matrix():
    tied, untied = GPT(llama_tiny()), GPT(llama_tiny(tie_embeddings=False))
    assert "lm_head.weight" in dict(untied.named_parameters()) and "wpe.weight" not in tied.state_dict()
    assert untied.num_params() - tied.num_params() == 100 * 64
    assert untied.num_params(non_embedding=True) == tied.num_params(non_embedding=True)
    assert (untied.lm_head.weight[100:] == 0).all()  # padding rows start at zero
    assert flops_per_token(untied.config) == flops_per_token(
        tied.config
    )  # the head's matmul is counted once either way
    assert n_linear(untied) == n_linear(tied) + 1 and "lm_head" not in float8_layers(untied)


# Published config.json values (the Hugging Face hub) of each preset's model.
PUBLISHED = {
    "llama-3.2-1b": (
        "Llama",
        dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            tie_word_embeddings=True,
        ),
    ),
    "llama-3.2-3b": (
        "Llama",
        dict(
            hidden_size=3072,
            intermediate_size=8192,
            num_hidden_layers=28,
            num_attention_heads=24,
            num_key_value_heads=8,
            vocab_size=128256,
            tie_word_embeddings=True,
        ),
    ),
    "qwen2.5-0.5b": (
        "Qwen2",
        dict(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151936,
            tie_word_embeddings=True,
        ),
    ),
    "qwen2.5-1.5b": (
        "Qwen2",
        dict(
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            vocab_size=151936,
            tie_word_embeddings=True,
        ),
    ),
    "qwen2.5-3b": (
        "Qwen2",
        dict(
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            vocab_size=151936,
            tie_word_embeddings=True,
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_presets_count_what_transformers_counts(name):
    transformers = pytest.importorskip("transformers")
    family, fields = PUBLISHED[name]
    with torch.device("meta"):
        hf = getattr(transformers, f"{family}ForCausalLM")(getattr(transformers, f"{family}Config")(**fields))
    model_cfg = preset_config(name, data_vocab=50257)  # GPT-2 data: the preset keeps its own vocab
    assert model_cfg.vocab_size == model_cfg.padded_vocab == fields["vocab_size"]
    assert count_params(model_cfg) == hf.num_parameters()


def test_a_presets_own_vocabulary_must_hold_the_datas():
    assert preset_config("llama-tiny", data_vocab=500).vocab_size == 500  # no vocab of its own: the data's
    with pytest.raises(ValueError, match="larger than preset 'llama-3.2-1b'.*--tokenizer=FOLDER"):
        preset_config("llama-3.2-1b", data_vocab=200_000)


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(n_kv_head=3), r"n_kv_head=3 must divide n_head=4 .* pick one of \[1, 2, 4\]"),
        (dict(norm="batchnorm"), "norm must be one of"),
        (dict(mlp="relu"), "mlp must be one of"),
        (dict(rope_theta=-1.0), "rope_theta must be 0"),
        (dict(n_head=8, n_embd=40), "head_dim=5 .* must be even"),
        (dict(rope_scaling={"rope_type": "yarn"}), "rope_scaling must be None or Llama 3's"),
        (dict(rope_scaling={**LLAMA3_SCALING, "rope_theta": 1.0}), r"unknown \['rope_theta'\]"),
        (
            dict(rope_scaling={k: v for k, v in LLAMA3_SCALING.items() if k != "factor"}),
            r"missing \['factor'\]",
        ),
        (dict(rope_theta=0.0, rope_scaling=LLAMA3_SCALING), "set rope_theta > 0"),
    ],
)
def test_bad_llama_fields_are_one_line_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        llama_tiny(**fields)
