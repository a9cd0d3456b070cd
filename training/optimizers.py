"""The optimizers a run steps: AdamW over every parameter (the default), or, with
--optimizer=muon, torch.optim.Muon over the blocks' hidden matrices and AdamW over the rest.

The split is by rule, as Keller Jordan's Muon, modded-nanogpt and nanochat split: a 2-D
weight inside the transformer blocks (h.N.*) is a hidden matrix (attention's and the MLP's
projections); the embeddings, an untied head, norms and biases stay with AdamW. A fused
matrix (attention's q, k, v in one c_attn; a SwiGLU's gate and up in one c_fc) is
orthogonalised whole, as torch.optim.Muon, nanochat and torchtitan do, not per part.

Both follow one schedule shape (schedule.lr_at): each group's learning rate is its own
peak (learning_rate for AdamW, muon_lr for Muon) times the schedule's factor at the step.
A list of optimizers is what torch.distributed.checkpoint saves and loads as one state
keyed by parameter name, whichever way the model is spread over the ranks.
"""

import torch

from errors import BadInput

OPTIMIZERS = ("adamw", "muon")
MUON_ADJUST_LR = ("original", "match_rms_adamw")
MUON_MIN_TORCH = (2, 9)  # torch.optim.Muon first shipped in torch 2.9


def check_optimizer(name: str, version: str | None = None):
    """Refuse an optimizer that is not one of OPTIMIZERS, or Muon on a torch without it."""
    if name not in OPTIMIZERS:
        raise BadInput(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    version = version or torch.__version__
    if name == "muon" and _major_minor(version) < MUON_MIN_TORCH:
        raise BadInput(
            f"--optimizer=muon needs torch >= 2.9 (torch.optim.Muon); this is torch {version}: "
            f"upgrade torch, or drop --optimizer=muon to train with AdamW"
        )


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def is_hidden_matrix(name: str, param: torch.Tensor) -> bool:
    """Muon's parameters: the 2-D weights inside the transformer blocks."""
    return name.startswith("h.") and param.ndim == 2


def muon_names(model: torch.nn.Module) -> list[str]:
    """The names of the parameters --optimizer=muon gives to Muon (the rest: AdamW)."""
    return [n for n, p in model.named_parameters() if p.requires_grad and is_hidden_matrix(n, p)]


def build_optimizers(model, cfg) -> list[torch.optim.Optimizer]:
    """[AdamW] or [AdamW, Muon] for model's parameters (after FSDP sharding, so that each
    optimizer holds the sharded parameters). cfg: a resolved TrainConfig."""
    muon = set(muon_names(model)) if cfg.optimizer == "muon" else set()
    named = dict(model.named_parameters())  # the tied matrix once
    adamw = torch.optim.AdamW(
        model.optimizer_groups(cfg.weight_decay, skip={id(named[n]) for n in muon}),
        lr=cfg.learning_rate,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=True,
    )
    if not muon:
        return [adamw]
    matrices = [p for n, p in named.items() if n in muon]
    return [
        adamw,
        torch.optim.Muon(
            matrices,
            lr=cfg.muon_lr,
            weight_decay=cfg.muon_weight_decay,
            momentum=cfg.muon_momentum,
            ns_steps=cfg.muon_ns_steps,
            adjust_lr_fn=cfg.muon_adjust_lr,
        ),
    ]


def set_learning_rates(optimizers: list, factor: float, cfg):
    """Every group at its optimizer's peak times factor (schedule.lr_at's value over
    learning_rate): one schedule shape for AdamW and Muon."""
    for optimizer in optimizers:
        peak = cfg.muon_lr if is_muon(optimizer) else cfg.learning_rate
        for group in optimizer.param_groups:
            group["lr"] = peak * factor


def is_muon(optimizer) -> bool:
    return type(optimizer).__name__ == "Muon"


def describe(cfg) -> str:
    """The optimizer and schedule in one line, for the start lines and the report."""
    adamw = f"AdamW lr {cfg.learning_rate:g} (betas {cfg.beta1:g}, {cfg.beta2:g}, weight decay {cfg.weight_decay:g})"
    what = (
        f"Muon on the blocks' matrices: lr {cfg.muon_lr:g} ({cfg.muon_adjust_lr} scaling), momentum "
        f"{cfg.muon_momentum:g}, {cfg.muon_ns_steps} Newton-Schulz steps, weight decay "
        f"{cfg.muon_weight_decay:g}; {adamw} for the rest"
        if cfg.optimizer == "muon"
        else adamw
    )
    schedule = (
        f"wsd: warmup {cfg.warmup_steps:,}, constant, linear decay over the last "
        f"{cfg.decay_fraction:g} of the steps to {cfg.min_lr:g}"
        if cfg.lr_schedule == "wsd"
        else f"cosine: warmup {cfg.warmup_steps:,}, cosine to {cfg.min_lr:g}"
    )
    return f"optimizer {what} | schedule {schedule}"
