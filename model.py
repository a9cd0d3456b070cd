"""GPT-2 style decoder in one file: config, presets, model, KV cache.

Read top to bottom: GPTConfig and PRESETS, the blocks and how they are recomputed
(activation checkpointing), the chunked loss and compile, float8 training (--fp8), then GPT
with its bookkeeping (parameter counts, optimizer groups, FLOPs per token).
"""

import functools
import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

from errors import BadInput

# What activation_checkpointing may be: False (keep every activation), "full" (keep each
# block's input, recompute the block) or "selective" (keep the matmuls' and attention's
# outputs too, recompute only the cheap ops between them). True, as older configs and
# checkpoints say, means "full".
ACTIVATION_CHECKPOINTING = (False, "full", "selective")


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # real vocabulary; ids at or above it are padding, never predicted
    block_size: int = 1024  # context length in tokens
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # residual stream width
    mlp_hidden: int = 0  # MLP inner width; 0 means 4 * n_embd
    dropout: float = 0.0  # dropout on attention probs, residual branches and embeddings (training only)
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2
    gelu_approximate: str = "tanh"  # MLP GELU: "tanh" (GPT-2's form) or "none" (exact erf, as nanoGPT)
    pad_vocab_multiple: int = 64  # embedding rows padded up to this multiple for faster matmuls
    activation_checkpointing: bool | str = False  # one of ACTIVATION_CHECKPOINTING (True: "full")
    loss_chunk: int = 0  # positions per chunk of the tied head + loss in training (0: all logits at once)

    def __post_init__(self):
        self.activation_checkpointing = checkpointing_value(self.activation_checkpointing)
        if self.n_embd % self.n_head:
            raise BadInput(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                f"pick n_head from the divisors of n_embd"
            )
        if self.gelu_approximate not in ("tanh", "none"):
            raise BadInput(
                f"gelu_approximate must be 'tanh' (GPT-2) or 'none' (exact GELU), "
                f"got {self.gelu_approximate!r}"
            )
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise BadInput(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def mlp_dim(self) -> int:
        return self.mlp_hidden or 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab(self) -> int:
        m = max(1, self.pad_vocab_multiple)
        return (self.vocab_size + m - 1) // m * m


# Named shapes. vocab_size is set from the data at train time; these are the
# GPT-2 defaults so `num_params` of a preset is the number in the presets table of docs/training.md.
PRESETS = {
    # CPU work: nanoGPT's CPU recipe shape (4 x 128, context 64).
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
    # A small GPT-2-tokenizer model that trains on 2 CPU cores in minutes.
    "small-cpu": dict(n_layer=4, n_head=4, n_embd=192, block_size=128),
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-350m": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    # GPT-2 XL's shape: the ~1B model of the 16 GB plan (1.558B with the GPT-2 vocab).
    "gpt2-1.5b": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),
    # The documented 300M run: 24 x 1,024, context 2,048, tied. A 4x MLP would make it
    # 356M; an MLP of 2,944 (2.875x, a multiple of 128) gives a true 299.2M.
    "300m": dict(n_layer=24, n_head=16, n_embd=1024, block_size=2048, mlp_hidden=2944),
    # The documented 1.2B run: context 1,024; 22 x 2,048 with 16 heads of 128 is 1.213B.
    "1.2b": dict(n_layer=22, n_head=16, n_embd=2048, block_size=1024),
}


def checkpointing_value(value) -> bool | str:
    """activation_checkpointing as one of ACTIVATION_CHECKPOINTING (True means "full"), or a
    ValueError naming the choices."""
    value = "full" if value is True else value
    if isinstance(value, (bool, str)) and value in ACTIVATION_CHECKPOINTING:
        return value
    raise BadInput(
        f"activation_checkpointing must be one of {', '.join(map(repr, ACTIVATION_CHECKPOINTING))} "
        f"(True means 'full'), got {value!r}"
    )


def check_preset(name: str):
    if name not in PRESETS:
        raise BadInput(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")


def preset_config(name: str, **overrides) -> GPTConfig:
    """GPTConfig for a preset, with fields replaced by the non-None overrides."""
    check_preset(name)
    valid = {f.name for f in fields(GPTConfig)}
    bad = set(overrides) - valid
    if bad:
        raise BadInput(f"unknown model fields {sorted(bad)}; valid: {sorted(valid)}")
    model_cfg = GPTConfig(**PRESETS[name])
    return replace(model_cfg, **{k: v for k, v in overrides.items() if v is not None})


# What makes two configs' weights interchangeable: equal values of these.
SHAPE_FIELDS = ("vocab_size", "padded_vocab", "block_size", "n_layer", "n_head", "n_embd", "mlp_dim", "bias")
# How a model trains, not what it computes: a run sets these, whatever its weights came from.
TRAINING_FIELDS = ("dropout", "activation_checkpointing", "loss_chunk")


def shape_differences(a: GPTConfig, b: GPTConfig) -> dict:
    """{field: (a's value, b's value)} for the SHAPE_FIELDS where a and b differ."""
    return {k: (getattr(a, k), getattr(b, k)) for k in SHAPE_FIELDS if getattr(a, k) != getattr(b, k)}


class KVCache:
    """Per-layer keys and values for incremental decoding, preallocated to block_size."""

    def __init__(self, model_cfg: GPTConfig, batch_size: int, device, dtype):
        shape = (batch_size, model_cfg.n_head, model_cfg.block_size, model_cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(model_cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(model_cfg.n_layer)]
        self.pos = 0  # tokens already cached
        self.capacity = model_cfg.block_size

    def reset(self):
        self.pos = 0


class CausalSelfAttention(nn.Module):
    def __init__(self, model_cfg: GPTConfig):
        super().__init__()
        self.n_head = model_cfg.n_head
        self.dropout = model_cfg.dropout
        self.c_attn = nn.Linear(model_cfg.n_embd, 3 * model_cfg.n_embd, bias=model_cfg.bias)
        self.c_proj = nn.Linear(model_cfg.n_embd, model_cfg.n_embd, bias=model_cfg.bias)
        self.resid_drop = nn.Dropout(model_cfg.dropout)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        mask, causal = None, True
        if cache is not None:
            start = cache.pos
            cache.k[layer][:B, :, start : start + T] = k
            cache.v[layer][:B, :, start : start + T] = v
            k = cache.k[layer][:B, :, : start + T]
            v = cache.v[layer][:B, :, : start + T]
            if start > 0:
                # Queries sit at positions start..start+T-1: each sees every key up to its own
                # position. SDPA's is_causal aligns top-left, which is wrong when T < keys.
                causal = False
                if T > 1:
                    qpos = torch.arange(start, start + T, device=x.device)[:, None]
                    mask = torch.arange(start + T, device=x.device)[None, :] <= qpos
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=causal and mask is None,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, model_cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(model_cfg.n_embd, model_cfg.mlp_dim, bias=model_cfg.bias)
        self.c_proj = nn.Linear(model_cfg.mlp_dim, model_cfg.n_embd, bias=model_cfg.bias)
        self.drop = nn.Dropout(model_cfg.dropout)
        self.gelu_approximate = model_cfg.gelu_approximate

    def forward(self, x):
        return self.drop(self.c_proj(F.gelu(self.c_fc(x), approximate=self.gelu_approximate)))


class Block(nn.Module):
    def __init__(self, model_cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(model_cfg.n_embd, bias=model_cfg.bias)
        self.attn = CausalSelfAttention(model_cfg)
        self.ln_2 = nn.LayerNorm(model_cfg.n_embd, bias=model_cfg.bias)
        self.mlp = MLP(model_cfg)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0):
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


def _ops(*names: str) -> list:
    """The aten ops of these names that this torch has (newer kernels are missing in older ones)."""
    return [getattr(torch.ops.aten, n).default for n in names if hasattr(torch.ops.aten, n)]


# What selective checkpointing keeps for backward: the outputs of the matmuls and of the fused
# attention kernels (CUDA's and the CPU's), float8's scaled matmuls and their amax (a scalar,
# whose reduction over a whole tensor need not run again); as torchtitan's op-level SAC does,
# but keeping every matmul's output where it recomputes every other one.
# Everything else a block computes (layer norms, GELU, dropout, casts, residual adds) is
# recomputed in backward: elementwise work, cheap beside the matmuls it feeds.
SELECTIVE_SAVE_OPS = _ops(
    "mm",
    "addmm",
    "bmm",
    "_scaled_mm",
    "max",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
)


def checkpointed(block: nn.Module, x, how: str):
    """block(x) with its activations recomputed in backward: all of them ("full"), or all but
    the outputs of SELECTIVE_SAVE_OPS ("selective"). The RNG state is replayed, so dropout
    draws the same masks."""
    if how == "selective":
        return checkpoint(
            block,
            x,
            use_reentrant=False,
            context_fn=functools.partial(create_selective_checkpoint_contexts, SELECTIVE_SAVE_OPS),
        )
    return checkpoint(block, x, use_reentrant=False)


def cross_entropy_chunk(hidden, weight, targets, vocab_size: int, want_grads: bool):
    """One chunk of ChunkedCrossEntropy: its summed loss and, with want_grads, the gradients
    of that sum with respect to the chunk's hidden states and the head's weight. hidden and
    weight come in the compute dtype. The matmuls run over all padded_vocab rows (aligned
    shapes, as the unchunked path); the softmax over the real vocab only, so the padding
    columns' gradient is zero. The logits' gradient, softmax - onehot, lies in [-1, 1]
    whatever the batch: in fp16 it neither underflows (divided by the positions first, most
    of it would: no loss scale reaches a forward pass) nor, summed over one chunk's positions
    into the weight's gradient, comes near fp16's 65,504 for layer-normed hidden states."""
    logits = F.linear(hidden, weight)[:, :vocab_size].float()
    valid = targets != -1
    safe = targets.clamp(min=0)[:, None]
    lse = logits.logsumexp(-1)
    loss_sum = ((lse - logits.gather(1, safe)[:, 0]) * valid).sum()
    if not want_grads:
        return loss_sum, None, None
    # d(summed loss)/d logits = softmax - onehot, 0 where ignored
    p = logits.sub_(lse[:, None]).exp_()  # the softmax, in the logits' memory
    p.scatter_add_(1, safe, -torch.ones_like(safe, dtype=p.dtype))
    g = torch.zeros(hidden.size(0), weight.size(0), device=hidden.device, dtype=hidden.dtype)
    g[:, :vocab_size] = p.mul_(valid[:, None])
    return loss_sum, g @ weight, (g.t() @ hidden).float()


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of the tied head, `chunk` positions at a time, so that one chunk's
    logits exist at a time in forward and in backward. The forward pass computes each
    chunk's gradients with respect to the hidden states and the head's weight while its
    logits are at hand (the same matmuls backward would do, so no extra compute), and keeps
    them in fp32, divided by the count of positions; backward only scales them (by the loss
    scale, the accumulation, ...) and casts them to their inputs' dtypes. Logits are
    computed as F.linear would under the active autocast and upcast to fp32 for the softmax,
    as the unchunked path does. Targets of -1 are ignored. `step` is cross_entropy_chunk, or
    a compiled copy of it (GPT.chunk_step)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, vocab_size: int, chunk: int, step):
        device = hidden.device.type
        # the dtype F.linear computes in: autocast's, else the inputs'
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        want_grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        count = (targets != -1).sum().clamp(min=1)
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        grad_hidden = (
            torch.empty(hidden.shape, device=hidden.device, dtype=torch.float32) if want_grads else None
        )
        grad_weight = (
            torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if want_grads else None
        )
        w = weight.to(dtype)
        for start in range(0, hidden.size(0), chunk):
            end = start + chunk
            loss_sum, g_hidden, g_weight = step(
                hidden[start:end].to(dtype), w, targets[start:end], vocab_size, want_grads
            )
            total += loss_sum
            if want_grads:
                grad_hidden[start:end] = g_hidden
                grad_weight += g_weight
        if want_grads:
            grad_hidden /= count
            grad_weight /= count
        ctx.dtypes = hidden.dtype, weight.dtype
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        return (
            (grad_hidden * grad_loss).to(hidden_dtype),
            (grad_weight * grad_loss).to(weight_dtype),
            None,
            None,
            None,
            None,
        )


@torch.compiler.disable
def chunked_cross_entropy(hidden, weight, targets, vocab_size: int, chunk: int, step):
    """ChunkedCrossEntropy, kept out of a compiled model's graph: the compiler would unroll
    its loop into one graph and schedule every chunk's logits at once, holding them all (a
    measured peak: docs/benchmarks.md, "Throughput and memory"). A compiled
    model compiles `step`, one chunk, on its own instead (compile_model)."""
    return ChunkedCrossEntropy.apply(hidden, weight, targets, vocab_size, chunk, step)


def compile_model(model: "GPT") -> nn.Module:
    """The model under torch.compile, for training: the model's graph, and apart from it the
    chunked loss's one chunk (see chunked_cross_entropy)."""
    model.chunk_step = torch.compile(cross_entropy_chunk)
    return torch.compile(model)


# ---- float8 training (--fp8) -------------------------------------------------------------

TORCHAO_MISSING = (
    "--fp8 trains through torchao's float8, which is not installed: pip install torchao "
    "(the release made for your torch, e.g. torchao==0.18.* for torch 2.13)"
)


def float8_worth_it(module: nn.Module, name: str) -> bool:
    """Whether --fp8 trains this layer in float8, as torchao advises for its tensorwise
    recipe (torchao.float8's README, "Performance"; its _auto_filter_for_recipe): an
    nn.Linear whose dimensions are multiples of 16 (float8 tensor cores need them), and not
    a small one: with in_features <= 4096 and out_features <= 1024, torchao's H100 table has
    the casts costing more than the faster matmul saves. The tied head is no nn.Linear (the
    embedding matrix through F.linear), so it stays in the run's dtype, as do the embeddings
    and norms."""
    if not isinstance(module, nn.Linear):
        return False
    out_f, in_f = module.weight.shape
    return in_f % 16 == 0 and out_f % 16 == 0 and not (in_f <= 4096 and out_f <= 1024)


def float8_layers(model: nn.Module) -> list[str]:
    """The names of the layers --fp8 trains in float8 (float8_worth_it)."""
    return [name for name, module in model.named_modules() if float8_worth_it(module, name)]


def n_linear(model: nn.Module) -> int:
    """The model's nn.Linear layers, float8 ones included (the tied head is none)."""
    return sum(isinstance(module, nn.Linear) for module in model.modules())


def to_float8(model: nn.Module, layers: list[str] | None = None) -> list[str]:
    """Swap the named layers (default: float8_layers) for torchao's Float8Linear, in place:
    dynamic tensorwise scaling, inputs and weights cast to e4m3 and gradients to e5m2 at each
    matmul, fused into neighbouring kernels by torch.compile. The parameters stay what they
    were (the same names, plain fp32 tensors), so checkpoints, sampling and export see a
    plain model. Call it before FSDP, compile and DDP wrap the model. Returns the names."""
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as e:
        raise BadInput(TORCHAO_MISSING) from e
    chosen = float8_layers(model) if layers is None else list(layers)
    convert_to_float8_training(
        model, config=Float8LinearConfig(), module_filter_fn=lambda m, fqn: fqn in chosen
    )
    return chosen


class GPT(nn.Module):
    def __init__(self, model_cfg: GPTConfig):
        super().__init__()
        self.config = model_cfg
        self.wte = nn.Embedding(model_cfg.padded_vocab, model_cfg.n_embd)
        self.wpe = nn.Embedding(model_cfg.block_size, model_cfg.n_embd)
        self.drop = nn.Dropout(model_cfg.dropout)
        self.h = nn.ModuleList(Block(model_cfg) for _ in range(model_cfg.n_layer))
        self.ln_f = nn.LayerNorm(model_cfg.n_embd, bias=model_cfg.bias)
        self.chunk_step = cross_entropy_chunk  # one chunk of the chunked loss (compiled by compile_model)
        self.reset_parameters()

    def reset_parameters(self):
        model_cfg = self.config
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                # Each block adds two residual branches: scale them so the stream's
                # variance does not grow with depth (GPT-2 paper, section 2.3).
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * model_cfg.n_layer))
            elif name.startswith("ln") or ".ln_" in name:
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, 0.0, 0.02)
        # The tied head's logits have std = std(wte) * sqrt(n_embd) after the final
        # LayerNorm. At 0.02 a 1,024-wide model would start at ln(V) + 0.2; capping the
        # std at 0.3 / sqrt(n_embd) starts every preset within 0.06 of uniform, as the
        # documented run does (10.82 = ln 50,257).
        nn.init.normal_(self.wte.weight, 0.0, min(0.02, 0.3 / math.sqrt(model_cfg.n_embd)))

    def forward(self, idx, targets=None, cache: KVCache | None = None, reduction: str = "mean"):
        """Logits over the real vocabulary (padding columns dropped) and, with targets,
        the mean cross-entropy (targets of -1 are ignored). Without targets only the last
        position's logits are computed, (B, 1, vocab): all that generation needs.
        reduction="none" (with targets): no logits, and each position's loss (B, T) in fp32,
        0 where the target is -1; the head runs only at the other positions (scoring)."""
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than the context "
                f"block_size={self.config.block_size}"
            )
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for i, block in enumerate(self.h):
            if self.config.activation_checkpointing and self.training and cache is None:
                x = checkpointed(block, x, self.config.activation_checkpointing)
            else:
                x = block(x, cache, i)
        if cache is not None:
            cache.pos += T
        x = self.ln_f(x)
        if targets is None:
            x = x[:, -1:]  # generation needs only the last position
        elif reduction == "none":
            return None, self.position_losses(x, targets)
        elif 0 < self.config.loss_chunk < x.shape[0] * x.shape[1]:
            # the logits of a long micro-batch are the largest tensor of a step (43 GiB for
            # 32 x 2,048 x 50,257 in fp32): never hold them all; no logits are returned
            loss = chunked_cross_entropy(
                x.reshape(-1, x.size(-1)),
                self.wte.weight,
                targets.reshape(-1),
                self.config.vocab_size,
                self.config.loss_chunk,
                self.chunk_step,
            )
            return None, loss
        logits = F.linear(x, self.wte.weight)[..., : self.config.vocab_size]
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
        )
        return logits, loss

    def position_losses(self, x, targets):
        """Cross-entropy at each position whose target is not -1 (0 elsewhere), from the final
        hidden states x (B, T, C). Only those positions go through the head, loss_chunk of
        them at a time, so scoring a few tokens per row never builds (B, T, vocab) logits."""
        scored = targets != -1
        hidden, wanted = x[scored], targets[scored]
        chunk = self.config.loss_chunk or max(1, hidden.size(0))
        vocab = self.config.vocab_size
        losses = [
            F.cross_entropy(
                F.linear(hidden[i : i + chunk], self.wte.weight)[:, :vocab].float(),
                wanted[i : i + chunk],
                reduction="none",
            )
            for i in range(0, hidden.size(0), chunk)
        ]
        out = torch.zeros(targets.shape, device=x.device, dtype=torch.float32)
        out[scored] = torch.cat(losses) if losses else out.new_zeros(0)
        return out

    # ---- bookkeeping -------------------------------------------------------------

    def num_params(self, non_embedding: bool = False) -> int:
        """Trainable parameters, the tied embedding/head matrix counted once and its
        padding rows (never used) left out. non_embedding drops wte and wpe."""
        return count_params(self.config, non_embedding)

    def optimizer_groups(self, weight_decay: float, skip: frozenset = frozenset()):
        """AdamW groups: decay on matrices (2-D and up), none on biases and norms.
        named_parameters() yields the tied matrix once. skip: ids of parameters another
        optimizer trains (--optimizer=muon's hidden matrices)."""
        params = [p for p in self.parameters() if p.requires_grad and id(p) not in skip]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]


def count_params(model_cfg: GPTConfig, non_embedding: bool = False) -> int:
    """Closed-form parameter count of GPT(model_cfg), as GPT.num_params reports it."""
    d, h, b = model_cfg.n_embd, model_cfg.mlp_dim, int(model_cfg.bias)
    ln = d * (1 + b)
    attn = 3 * d * d + 3 * d * b + d * d + d * b
    mlp = d * h + h * b + h * d + d * b
    blocks = model_cfg.n_layer * (2 * ln + attn + mlp) + ln
    if non_embedding:
        return blocks
    return blocks + model_cfg.vocab_size * d + model_cfg.block_size * d


def flops_per_token(model_cfg: GPTConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token (forward + backward), PaLM appendix B: 6N for the
    matmul weights (blocks and the tied head; not the position table) plus
    12 * n_layer * n_embd * seq_len for attention scores and values."""
    T = seq_len or model_cfg.block_size
    n_matmul = count_params(model_cfg, non_embedding=True) + model_cfg.vocab_size * model_cfg.n_embd
    return 6 * n_matmul + 12 * model_cfg.n_layer * model_cfg.n_embd * T
