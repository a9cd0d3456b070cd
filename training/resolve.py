"""How a run runs, decided once: resolve() turns a config and a machine into the settings
the run takes. Its answer covers every "auto" and unset default that depends on where the
run runs: the parallelism, whether the process joins a process group, the dtype, compile,
the loss chunk and the schedule's defaults; and it refuses what the machine cannot run
(--offload without a GPU, --fp8 without float8 tensor cores or torchao). train.py, the
planner (plan.py) and bench/gpu_suite.py all call it; a run saves its answer in config.json.
"""

import dataclasses
import importlib.util
import math

import torch

from model import LOSS_CHUNK, TORCHAO_MISSING, TRAINING_FIELDS, GPTConfig
from parallel.devices import auto_dtype_name, native_bf16, native_fp8
from training.config import ConfigError, TrainConfig
from training.memory import GiB, Way, estimate, fits


@dataclasses.dataclass(frozen=True)
class Machine:
    """What a run runs on, as far as its settings depend on it."""

    device_type: str  # "cuda" or "cpu"
    world_size: int  # processes (one per GPU)
    memory_bytes: float = math.inf  # per device; inf: no limit to plan for (a CPU)
    native_bf16: bool = True  # bf16 is fast here (GPUs from Ampere on; not CPUs)
    fp8: bool = False  # float8 tensor cores (compute capability 8.9+), for --fp8
    torchao: bool = True  # torchao is installed, for --fp8

    @classmethod
    def of(cls, device: torch.device, world_size: int) -> "Machine":
        """The machine this process runs on."""
        torchao = importlib.util.find_spec("torchao") is not None
        if device.type != "cuda":
            return cls("cpu", world_size, native_bf16=False, torchao=torchao)
        return cls(
            "cuda",
            world_size,
            torch.cuda.get_device_properties(device).total_memory,
            native_bf16(device),
            native_fp8(device),
            torchao,
        )

    @classmethod
    def planned(cls, device: str, world_size: int, memory_gib: float) -> "Machine":
        """A machine the planner plans for: GPUs of memory_gib with bf16 and float8, unless
        the config names the CPU."""
        if device == "cpu":
            return cls("cpu", world_size, native_bf16=False)
        return cls("cuda", world_size, memory_gib * GiB, fp8=True)


@dataclasses.dataclass(frozen=True)
class Resolved:
    """resolve()'s answer."""

    cfg: TrainConfig  # no "auto" or unset default left
    model_cfg: GPTConfig  # the shape it was given, with the run's training fields
    way: Way  # how the model is spread and what trades compute for memory
    why: str  # why this way
    machine: Machine

    @property
    def joins_process_group(self) -> bool:
        """Several processes train together; FSDP shards over a mesh even of one."""
        return self.machine.world_size > 1 or self.way.parallelism == "fsdp"

    def to_dict(self) -> dict:
        """For config.json (device memory in GiB; None: no limit, a CPU)."""
        m = self.machine
        return dict(
            way=self.way.name,
            why=self.why,
            joins_process_group=self.joins_process_group,
            machine=dict(
                device_type=m.device_type,
                world_size=m.world_size,
                native_bf16=m.native_bf16,
                fp8=m.fp8,
                memory_gib=None if m.memory_bytes == math.inf else m.memory_bytes / GiB,
            ),
        )


def resolve(cfg: TrainConfig, machine: Machine, shape: GPTConfig) -> Resolved:
    """The settings a run of cfg takes on machine, for a model of this shape (its
    architecture: from the config, or from the checkpoint it starts from)."""
    if cfg.offload and machine.device_type != "cuda":
        raise ConfigError(
            "--offload moves FSDP's shards from a GPU to CPU memory; on a CPU run there is "
            "nothing to free: drop --offload"
        )
    if cfg.fp8 and not machine.fp8:
        where = (
            "a CPU has none"
            if machine.device_type == "cpu"
            else "this GPU has none (compute capability < 8.9)"
        )
        raise ConfigError(
            f"--fp8 needs float8 tensor cores (H100, H200, L4, L40S and newer); {where}: drop --fp8"
        )
    if cfg.fp8 and not machine.torchao:
        raise ConfigError(TORCHAO_MISSING)
    compile = cfg.compile if cfg.compile is not None else machine.device_type == "cuda"
    cfg = dataclasses.replace(
        cfg,
        min_lr=cfg.min_lr if cfg.min_lr is not None else cfg.learning_rate / 10,
        lr_decay_steps=cfg.lr_decay_steps or cfg.max_steps,
        dtype=(
            cfg.dtype
            if cfg.dtype != "auto"
            else "bfloat16"
            if cfg.fp8  # bf16 around the float8 matmuls
            else auto_dtype_name(machine.device_type, machine.native_bf16)
        ),
        compile=compile,
        loss_chunk=cfg.loss_chunk if cfg.loss_chunk is not None else 0 if compile else LOSS_CHUNK,
    )
    model_cfg = dataclasses.replace(shape, **{k: getattr(cfg, k) for k in TRAINING_FIELDS})
    way, why = choose_way(cfg, machine, model_cfg)
    return Resolved(dataclasses.replace(cfg, parallelism=way.parallelism), model_cfg, way, why, machine)


def choose_way(cfg: TrainConfig, machine: Machine, model_cfg: GPTConfig) -> tuple[Way, str]:
    """The way a config runs, and why. Offload keeps FSDP's shards in CPU memory, so it means
    FSDP; --parallelism=auto takes DDP when the memory model says it fits the card, FSDP
    otherwise (with the config's checkpointing either way). cfg: with dtype and compile
    resolved."""
    if cfg.offload:
        return Way(
            "fsdp", cfg.activation_checkpointing, True
        ), "as configured: offload keeps FSDP's shards on the CPU"
    if cfg.parallelism != "auto":
        return Way(cfg.parallelism, cfg.activation_checkpointing), "as configured"
    ddp, fsdp = (Way(p, cfg.activation_checkpointing) for p in ("ddp", "fsdp"))
    world, card = machine.world_size, machine.memory_bytes
    if card == math.inf:
        return ddp, "no device memory to fit: a CPU run"
    need = estimate(cfg, world, model_cfg, ddp)["total"]
    if fits(need, card) or world == 1:
        why = "fits" if fits(need, card) else "does not fit, and FSDP over one process saves nothing"
        return (
            ddp,
            f"the planner puts {ddp.name} at {need / GiB:.1f} GiB per GPU: {why} in {card / GiB:.0f} GiB",
        )
    return fsdp, (
        f"the planner puts {ddp.name} at {need / GiB:.1f} GiB per GPU, over {card / GiB:.0f} GiB; "
        f"{fsdp.name} needs {estimate(cfg, world, model_cfg, fsdp)['total'] / GiB:.1f} GiB"
    )
