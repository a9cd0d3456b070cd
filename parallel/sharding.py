"""How the model is spread over the ranks, and the checkpoint state that is the same
whichever way it was.

- ddp: every rank holds the whole model, its gradients and optimizer state (DDP averages
  the gradients; each rank's Muon orthogonalises the same averaged matrices). One process:
  the plain model.
- fsdp: torch's FSDP2 (`fully_shard`) on each transformer block, then on the root, over a
  mesh of all ranks (one rank too): parameters, gradients and AdamW state are sharded, and
  each block's full parameters exist only while it computes. With offload, the shards
  live in pinned CPU memory and AdamW steps on the CPU.

Checkpoints hold full, unsharded state gathered to rank 0's CPU memory, keyed by parameter
name, so any run resumes under any parallelism and world size.
"""

import contextlib
import warnings

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.nn.parallel import DistributedDataParallel as DDP

try:  # torch >= 2.6
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        FSDPModule,
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )
except ImportError:  # torch 2.5
    from torch.distributed._composable.fsdp import (
        CPUOffloadPolicy,
        FSDPModule,
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

# GPT's calls besides forward (model.py's docstring): FSDP gathers the root's parameters
# (embeddings, final norm, an untied head) around these too.
FORWARD_METHODS = ("next_token_logits", "position_losses", "logits")

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard(model, env, dtype: torch.dtype, offload: bool):
    """fully_shard each block, then the root (whose parameters are the embeddings and final
    norm). 16-bit runs compute with 16-bit parameters and reduce gradients in fp32; the
    sharded fp32 parameters are the optimizer's master weights."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(env.device.type, (env.world,))
    half = dtype in (torch.bfloat16, torch.float16)
    options = dict(
        mesh=mesh,
        mp_policy=MixedPrecisionPolicy(param_dtype=dtype if half else None, reduce_dtype=torch.float32),
    )
    if offload:
        options["offload_policy"] = CPUOffloadPolicy()
    for block in model.h:
        fully_shard(block, **options)
    fully_shard(model, **options)
    for name in FORWARD_METHODS:
        register_fsdp_forward_method(model, name)
    # FSDP warns when a module returns a view (the logits sliced to the real vocab), in case
    # it is modified in place, which would skip a hook; nothing here modifies model outputs
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    return model


def replicate(model, env):
    """The model DDP's way on several ranks (unchanged on one): a copy per rank, gradients
    averaged; DDP's gradient buckets are the gradients themselves (no second copy)."""
    if env.world == 1:
        return model
    return DDP(
        model,
        device_ids=[env.device.index] if env.device.type == "cuda" else None,
        gradient_as_bucket_view=True,
    )


def unwrapped(model):
    """The model without DDP's wrapper (evaluation runs no backward, so needs no hooks)."""
    return model.module if isinstance(model, DDP) else model


def grad_sync(model, sync: bool):
    """A context for one micro-batch's backward: gradients are reduced across ranks only on
    the last micro-batch of a step."""
    if isinstance(model, DDP) and not sync:
        return model.no_sync()
    inner = getattr(model, "_orig_mod", model)  # under torch.compile
    if isinstance(inner, FSDPModule):
        inner.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def clip_grad_norm(params: list, max_norm: float) -> torch.Tensor:
    """Clip by the global gradient norm (across every rank's shards) and return it, before
    clipping, as a plain tensor."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def full_state(model, optimizers: list) -> tuple[dict, dict]:
    """(model state, optimizer state), full and on the CPU, on rank 0 (other ranks get empty
    dicts). Every rank must call it: FSDP gathers each parameter from its shards. Several
    optimizers (AdamW and Muon) make one optimizer state, keyed by parameter name."""
    return get_state_dict(model, optimizers, options=_FULL)


def load_full_state(model, optimizers: list | None, model_state: dict, optimizer_state: dict | None):
    """Load full state into a model, and its optimizers unless optimizer_state is None
    (weights only), however the model is spread over the ranks."""
    options = StateDictOptions(full_state_dict=True)
    if optimizer_state is None:
        set_model_state_dict(model, model_state, options=options)
    elif (
        all(isinstance(k, int) for k in optimizer_state["state"])
        and not isinstance(model, FSDPModule)
        and len(optimizers) == 1
    ):
        model.load_state_dict(model_state)  # a checkpoint from before state was keyed by name
        optimizers[0].load_state_dict(optimizer_state)
    else:
        set_state_dict(
            model, optimizers, model_state_dict=model_state, optim_state_dict=optimizer_state, options=options
        )
