"""TrainConfig: every setting of a run, with its default and a one-line doc.

A config file in config/ is plain Python assignments (`max_steps = 5_000`); command-line
`--key=value` overrides are parsed to the field's type. Unknown keys are errors that name
the closest valid key. The cadences of evaluating and logging are methods here, so each is
written once (when a run saves is training/checkpointing.py's). What depends on the machine a
run runs on ("auto", unset defaults) is resolved once, by resolve.resolve().
"""

import dataclasses
import difflib
import json
import math
import os
import runpy
import sys
import traceback
import typing
from dataclasses import dataclass, fields

from errors import BadInput
from evaluation.scoring import METRICS, TASK_NAME, metric_key, unknown_metric_hint
from model import LOSS_CHUNK, GPTConfig, check_preset, checkpointing_value, preset_config
from parallel.devices import check_device_name, check_dtype_name
from text.loader import check_data_mix
from training.checkpointing import save_scheduled
from training.metrics import check_wandb
from training.optimizers import MUON_ADJUST_LR, check_optimizer
from training.schedule import SCHEDULES

PARALLELISMS = ("auto", "ddp", "fsdp")
# The loss chunk of an eager run is model.LOSS_CHUNK: there chunks were as fast or faster,
# while under torch.compile the compiler's fused cross-entropy over all logits was faster
# (both measured: docs/benchmarks.md), so a compiled run takes all logits at once unless
# loss_chunk says otherwise.


def setting(default, doc: str):
    """A field with its one-line doc (shown by --help). A dict default is copied for each
    config (dataclasses refuse a shared mutable default)."""
    if isinstance(default, dict):
        return dataclasses.field(
            default_factory=lambda: dict(default), metadata={"doc": doc, "default": default}
        )
    return dataclasses.field(default=default, metadata={"doc": doc, "default": default})


class ConfigError(BadInput):
    """A setting that cannot be meant; the message names the fix."""


@dataclass
class TrainConfig:
    # ---- run and data
    run_name: str = setting("run", "folder under out_dir for checkpoints, logs and the report")
    out_dir: str = setting("checkpoints", "root of all runs")
    data_dir: str = setting(
        "data/shakespeare", "folder made by prepare_data.py (train.bin, val.bin, meta.json)"
    )
    data_mix: dict[str, float] = setting(
        {},
        "several prepared datasets and their weights, used instead of "
        "data_dir: --data_mix=data/web:0.7,data/code:0.3",
    )
    seed: int = setting(1337, "seeds init, dropout and which windows each step draws")
    # ---- model: a preset, then the non-None fields below replace its values
    model: str = setting(
        "gpt2-124m", "model preset: one of model.PRESETS (ignored with --init_from: the source's shape)"
    )
    n_layer: typing.Optional[int] = setting(None, "transformer blocks (None: the preset's)")
    n_head: typing.Optional[int] = setting(None, "attention heads (None: the preset's)")
    n_kv_head: typing.Optional[int] = setting(
        None, "key/value heads, grouped-query attention; 0 = n_head (None: the preset's)"
    )
    n_embd: typing.Optional[int] = setting(None, "width (None: the preset's)")
    block_size: typing.Optional[int] = setting(None, "context length in tokens (None: the preset's)")
    mlp_hidden: typing.Optional[int] = setting(None, "MLP inner width, 0 = 4 x n_embd (None: the preset's)")
    bias: typing.Optional[bool] = setting(
        None, "biases in Linear and LayerNorm layers (None: the preset's, GPT-2: True)"
    )
    tie_embeddings: typing.Optional[bool] = setting(
        None, "the output head is the embedding matrix; False: a separate lm_head (None: the preset's)"
    )
    dropout: float = setting(0.0, "dropout in training (the documented 300M run used 0.1)")
    activation_checkpointing: typing.Union[bool, str] = setting(
        False,
        "recompute activations in backward to save memory: full (keep each block's input, recompute the "
        "block: ~30% more compute), selective (keep the matmuls' outputs too, recompute the cheap ops "
        "between them), or False (True means full)",
    )
    loss_chunk: typing.Optional[int] = setting(
        None,
        "positions per chunk of the tied head + loss: one chunk's logits "
        "exist at a time, no extra compute; 0: all logits at once (None: "
        f"{LOSS_CHUNK:,} in eager runs, 0 when compiled: the faster of each)",
    )
    # ---- batch: the global batch is what a run means; accumulation is derived
    global_batch_size: int = setting(512, "sequences per optimizer step, summed over ranks and micro-steps")
    micro_batch_size: int = setting(8, "sequences per device per forward/backward")
    # ---- optimizer and schedule
    max_steps: int = setting(100_000, "optimizer steps to train")
    learning_rate: float = setting(6e-4, "peak learning rate, reached at the end of warmup")
    min_lr: typing.Optional[float] = setting(
        None, "where the schedule's decay ends (None: learning_rate / 10); Muon's ends at the same fraction"
    )
    warmup_steps: int = setting(2_000, "linear warmup steps from learning_rate / (warmup_steps + 1)")
    lr_decay_steps: typing.Optional[int] = setting(
        None, "step where the decay reaches min_lr (None: max_steps)"
    )
    weight_decay: float = setting(0.1, "AdamW decoupled weight decay on 2-D+ weights only")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.95, "AdamW beta2")
    eps: float = setting(1e-8, "AdamW epsilon")
    grad_clip: float = setting(1.0, "clip the global gradient norm to this (0 disables)")
    optimizer: str = setting(
        "adamw",
        "adamw | muon: muon trains the blocks' 2-D matrices with torch.optim.Muon (at muon_lr) "
        "and the rest with AdamW (at learning_rate); needs torch >= 2.9",
    )
    muon_lr: float = setting(
        0.02,
        "Muon's peak learning rate, on learning_rate's schedule shape; with muon_adjust_lr=original "
        "0.02 needs no retuning alongside any AdamW learning_rate (docs/training.md)",
    )
    muon_adjust_lr: str = setting(
        "original",
        "how Muon scales muon_lr per matrix (torch's adjust_lr_fn): original (sqrt(max(1, rows/cols)), "
        "Keller Jordan's) or match_rms_adamw (0.2 sqrt(max(rows, cols)), Moonshot's)",
    )
    muon_momentum: float = setting(0.95, "Muon's Nesterov momentum")
    muon_weight_decay: float = setting(
        0.01, "Muon's decoupled weight decay (torch applies muon_lr x this per step, as Keller Jordan's Muon)"
    )
    muon_ns_steps: int = setting(5, "Newton-Schulz iterations that orthogonalise each Muon update")
    lr_schedule: str = setting(
        "cosine",
        "cosine | wsd: warmup, then a cosine to min_lr; or warmup, constant, and a linear decay "
        "to min_lr over the last decay_fraction of the steps (extendable from a constant-stage checkpoint)",
    )
    decay_fraction: float = setting(
        0.2, "wsd: the share of the steps (up to lr_decay_steps) its final linear decay takes"
    )
    # ---- hardware
    device: str = setting("auto", "auto | cpu | cuda | cuda:N (under torchrun the local rank picks N)")
    dtype: str = setting(
        "auto",
        "auto | float32 | bfloat16 | float16 (auto: bf16 on GPUs that have it, else fp16; fp32 on CPU)",
    )
    compile: typing.Optional[bool] = setting(None, "torch.compile the model (None: on for CUDA, off on CPU)")
    parallelism: str = setting(
        "auto",
        "ddp | fsdp | auto: a full copy per rank, or parameters, gradients and AdamW "
        "state sharded (FSDP2); auto: DDP when the planner says it fits the GPU",
    )
    fp8: bool = setting(
        False,
        "float8 matmuls in the blocks' large linear layers (torchao; bf16 around them; needs a "
        "GPU of compute capability 8.9+: H100, H200, L4, L40S; MFU still counts the bf16 peak)",
    )
    offload: bool = setting(
        False,
        "FSDP only: keep parameters, gradients and AdamW state in pinned CPU memory "
        "and step AdamW on the CPU (fits ~1B on one 16 GB GPU)",
    )
    # ---- evaluation, logging, checkpoints
    eval_interval: int = setting(1_000, "steps between val-loss evaluations (and at save_steps and the end)")
    eval_batches: int = setting(
        20,
        "fixed batches of micro_batch_size averaged per evaluation (in total, split over "
        "ranks); 0: never evaluate (no val loss, no best_model.pt), for benchmarks",
    )
    log_interval: int = setting(100, "steps between train-loss log lines")
    save_interval: int = setting(
        10_000,
        "steps between checkpoint_step_N.pt saves (and at the end); 0: never save "
        "a step checkpoint, for benchmarks",
    )
    save_steps: tuple[int, ...] = setting(
        (), "extra steps to save (and evaluate) at, comma-separated: --save_steps=16,80,200"
    )
    keep_last: int = setting(0, "keep only the newest N step checkpoints (0 keeps all)")
    early_stopping_patience: int = setting(
        0, "stop after N evaluations without an improvement of early_stopping_metric (0: never)"
    )
    early_stopping_metric: str = setting(
        "val_loss",
        "what early stopping watches: val_loss (lower is better), or "
        "TASK_acc / TASK_acc_norm_tokens / TASK_acc_norm_chars of an eval_tasks task (higher is better)",
    )
    eval_tasks: dict[str, str] = setting(
        {},
        "multiple-choice tasks scored at every evaluation, NAME:PATH of a jsonl "
        "(HellaSwag's, or context/choices/label): "
        "--eval_tasks=hellaswag:data/hellaswag_val.jsonl",
    )
    eval_task_examples: int = setting(
        250,
        "examples of each eval_tasks task scored per evaluation: a fixed subset, "
        "the same every time, split over the ranks (0: all)",
    )
    tensorboard: bool = setting(True, "write TensorBoard scalars to the run folder")
    wandb_project: str = setting(
        "",
        "also log TensorBoard's scalars to this Weights & Biases project (needs "
        "`pip install wandb`; WANDB_MODE=offline logs without network)",
    )
    progress_bar: bool = setting(True, "tqdm bar over steps with ETA on rank 0, when stderr is a terminal")
    # ---- faults
    max_nonfinite_steps: int = setting(
        10,
        "stop the run after this many steps in a row with a non-finite loss or "
        "gradient norm (such steps are never applied)",
    )
    loss_spike_factor: float = setting(
        1.5, "log a spike when a step's loss exceeds this x the mean of the 100 before it (0: off)"
    )
    divergence_factor: float = setting(
        3.0,
        "stop the run (as for non-finite steps) when the loss stays above "
        "this x the mean of the steps before it for divergence_steps steps "
        "(0: off)",
    )
    divergence_steps: int = setting(10, "steps in a row over divergence_factor that stop the run")
    collective_timeout_s: int = setting(
        600,
        "seconds a rank waits for the others in a collective before the "
        "job stops, naming the rank that stopped answering",
    )
    # ---- actions (usually given on the command line)
    resume: str = setting(
        "", '"latest": newest checkpoint of this run; "auto": latest if any, else start fresh; or a path'
    )
    init_from: str = setting(
        "",
        "start a new run from this checkpoint's (or Hugging Face folder's) weights and shape; "
        "with --resume=auto only while the run has no checkpoint",
    )
    dry_run: bool = setting(False, "print the plan (memory, FLOPs, time) and exit; builds nothing")
    report: str = setting(
        "",
        "write report.md for this run folder from its metrics.jsonl and exit; RUN1,RUN2,...: each "
        "run's, and comparison.md + comparison.png (val loss against tokens) in their common folder",
    )
    # ---- planning (--dry_run)
    plan_gpus: int = setting(0, "GPUs the --dry_run plan is for (0: this launch's world size)")
    plan_mfu: float = setting(0.4, "model FLOPs utilization the --dry_run wall-time estimate assumes")
    plan_gpu_memory_gib: tuple[float, ...] = setting(
        (40.0, 80.0),
        "GPU memory sizes the --dry_run plan fits the run to, comma-separated: --plan_gpu_memory_gib=16",
    )

    def __post_init__(self):
        self.validate()

    # ---- derived values: one rule each -------------------------------------------------

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The preset's GPTConfig with this config's non-None model fields replacing its values,
        for data of vocab_size tokens (the model's vocabulary, unless the preset has its own)."""
        return preset_config(self.model, vocab_size, **{k: getattr(self, k) for k in MODEL_FIELDS})

    def model_overrides(self) -> dict:
        """The model fields this config sets explicitly (not None)."""
        return {k: getattr(self, k) for k in MODEL_FIELDS if getattr(self, k) is not None}

    def accumulation(self, world_size: int) -> int:
        """Gradient-accumulation steps: global batch / (micro-batch x world size), exactly."""
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step == 0:
            return self.global_batch_size // per_step
        msg = (
            f"global_batch_size={self.global_batch_size} is not divisible by micro_batch_size="
            f"{self.micro_batch_size} x world_size={world_size} = {per_step}."
        )
        if self.global_batch_size % world_size == 0:
            msg += (
                f" With {world_size} processes, micro_batch_size can be one of "
                f"{_divisors(self.global_batch_size // world_size)}."
            )
        if self.global_batch_size % self.micro_batch_size == 0:
            msg += (
                f" With micro_batch_size={self.micro_batch_size}, the number of processes can be one of "
                f"{_divisors(self.global_batch_size // self.micro_batch_size)}."
            )
        else:
            msg += f" Or change global_batch_size to a multiple of {per_step}."
        raise ConfigError(msg)

    # ---- cadences: when each concern acts, after `step` optimizer updates -----------------

    def should_evaluate(self, step: int) -> bool:
        """Evaluate after `step` updates: every eval_interval, at save_steps and at the end."""
        return self.eval_batches > 0 and (
            step % self.eval_interval == 0 or step in self.save_steps or step >= self.max_steps
        )

    def should_log(self, step: int) -> bool:
        """Log the loss of step `step`, which was measured on the weights after `step`
        updates (so it lines up with an evaluation after `step` updates): every
        log_interval, and where the report has a row (the end of warmup, every scheduled save:
        checkpointing.save_scheduled)."""
        return step % self.log_interval == 0 or step == self.warmup_steps or save_scheduled(self, step)

    def datasets(self) -> dict:
        """{data_dir: weight} of the data this run trains on: data_mix, else data_dir alone."""
        return dict(self.data_mix) if self.data_mix else {self.data_dir: 1.0}

    @property
    def run_dir(self) -> str:
        return os.path.join(self.out_dir, self.run_name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # ---- settings that cannot be meant -----------------------------------------------------

    def validate(self):
        try:
            check_preset(self.model)
            check_device_name(self.device)
            check_dtype_name(self.dtype)
            self.activation_checkpointing = checkpointing_value(self.activation_checkpointing)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self._validate_ranges()
        self._validate_optimizer()
        if any(s <= 0 for s in self.save_steps):
            raise ConfigError(f"save_steps must be positive steps, got {self.save_steps}")
        if not self.plan_gpu_memory_gib or any(g <= 0 for g in self.plan_gpu_memory_gib):
            raise ConfigError(
                f"plan_gpu_memory_gib must be GPU memory sizes in GiB, got {self.plan_gpu_memory_gib}"
            )
        if self.parallelism not in PARALLELISMS:
            raise ConfigError(
                f"parallelism must be one of {', '.join(PARALLELISMS)}, got {self.parallelism!r}"
            )
        if self.fp8 and self.dtype not in ("auto", "bfloat16"):
            raise ConfigError(
                f"--fp8 runs bf16 autocast around its float8 matmuls, not {self.dtype}: "
                f"use --dtype=bfloat16 (or auto)"
            )
        if self.offload and self.parallelism == "ddp":
            raise ConfigError(
                "--offload keeps FSDP's shards in CPU memory: use it with --parallelism=fsdp "
                "(or auto), not ddp"
            )
        self._validate_tasks_and_loggers()
        if self.data_mix:
            try:
                check_data_mix(self.data_mix)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if self.resume and self.init_from and self.resume != "auto":
            raise ConfigError(
                "--resume and --init_from cannot be used together: --resume continues this run "
                "(weights, optimizer, step); --init_from starts a new run from a checkpoint's "
                "weights. Drop one of them, or use --resume=auto: --init_from's weights the first "
                "time, this run's newest checkpoint after"
            )

    def _validate_ranges(self):
        """Every number within the range its meaning allows."""
        for k in (
            "global_batch_size",
            "micro_batch_size",
            "max_steps",
            "eval_interval",
            "log_interval",
            "max_nonfinite_steps",
            "collective_timeout_s",
            "divergence_steps",
        ):
            if getattr(self, k) <= 0:
                raise ConfigError(f"{k} must be positive, got {getattr(self, k)}")
        for k in (
            "warmup_steps",
            "keep_last",
            "early_stopping_patience",
            "weight_decay",
            "grad_clip",
            "plan_gpus",
            "loss_chunk",
            "eval_batches",
            "save_interval",
            "eval_task_examples",
        ):
            if getattr(self, k) is not None and getattr(self, k) < 0:
                raise ConfigError(f"{k} must be >= 0, got {getattr(self, k)}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.learning_rate:
            raise ConfigError(
                f"min_lr={self.min_lr} must be between 0 and learning_rate={self.learning_rate}: "
                f"the cosine decays from learning_rate down to min_lr; lower --min_lr"
            )
        if self.lr_decay_steps is not None and self.lr_decay_steps <= 0:
            raise ConfigError(
                f"lr_decay_steps must be positive (or None for max_steps), got {self.lr_decay_steps}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.loss_spike_factor != 0 and not self.loss_spike_factor > 1:
            raise ConfigError(
                f"loss_spike_factor must be > 1 (or 0 to turn spike logging off), "
                f"got {self.loss_spike_factor}"
            )
        if self.divergence_factor != 0 and not self.divergence_factor > 1:
            raise ConfigError(
                f"divergence_factor must be > 1 (or 0 to turn divergence stops off), "
                f"got {self.divergence_factor}"
            )

    def _validate_optimizer(self):
        try:
            check_optimizer(self.optimizer)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(
                f"decay_fraction must be in (0, 1], got {self.decay_fraction}: the share of the steps "
                f"the wsd decay takes (0.2: the last fifth)"
            )
        if self.muon_adjust_lr not in MUON_ADJUST_LR:
            raise ConfigError(
                f"muon_adjust_lr must be one of {', '.join(MUON_ADJUST_LR)}, got {self.muon_adjust_lr!r}"
            )
        if not self.muon_lr > 0 or not 0 <= self.muon_momentum < 1 or self.muon_weight_decay < 0:
            raise ConfigError(
                f"muon_lr must be > 0, muon_momentum in [0, 1) and muon_weight_decay >= 0; got "
                f"{self.muon_lr}, {self.muon_momentum}, {self.muon_weight_decay}"
            )
        if not 1 <= self.muon_ns_steps < 100:
            raise ConfigError(f"muon_ns_steps must be in 1..99, got {self.muon_ns_steps} (5 is Muon's)")

    def _validate_tasks_and_loggers(self):
        bad = [name for name in self.eval_tasks if not TASK_NAME.fullmatch(name)]
        if bad:
            raise ConfigError(
                f"eval_tasks name {bad[0]!r}: a name is a letter, then letters, digits, _ or -, "
                f"e.g. --eval_tasks=hellaswag:data/hellaswag_val.jsonl"
            )
        if self.eval_tasks and self.eval_batches == 0:
            raise ConfigError(
                "eval_tasks are scored at each evaluation, and eval_batches=0 turns evaluation off; "
                "set eval_batches or drop eval_tasks"
            )
        metrics = ["val_loss"] + [metric_key(t, m) for t in self.eval_tasks for m in METRICS]
        if self.early_stopping_metric not in metrics:
            raise ConfigError(
                f"early_stopping_metric must be one of {', '.join(metrics)} (a task's metrics exist "
                f"when eval_tasks names it), got {self.early_stopping_metric!r}"
                + unknown_metric_hint(self.early_stopping_metric)
            )
        if self.wandb_project:
            try:
                check_wandb()
            except ValueError as e:
                raise ConfigError(str(e)) from None


FIELDS = {f.name: f for f in fields(TrainConfig)}
TYPES = typing.get_type_hints(TrainConfig)
# The model fields a TrainConfig may set: those it shares with GPTConfig.
MODEL_FIELDS = tuple(f.name for f in fields(GPTConfig) if f.name in FIELDS)
# Bare flags: `--resume` means the newest checkpoint, `--dry_run` means True.
BARE_FLAG_VALUES = {
    "resume": "latest",
    **{k: "True" for k, t in TYPES.items() if t is bool or bool in typing.get_args(t)},
}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, FIELDS, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else "; run `python train.py --help` for the list"
    return ConfigError(f"unknown config key {key!r}{hint}")


def parse_value(key: str, raw):
    """Convert raw (a string from the command line, or a value from a config file) to the
    type of field `key`."""
    typ = TYPES[key]
    optional = typing.get_origin(typ) is typing.Union and type(None) in typing.get_args(typ)
    base = typing.Union[tuple(t for t in typing.get_args(typ) if t is not type(None))] if optional else typ
    if raw is None or (isinstance(raw, str) and raw in ("None", "none", "null")):
        if optional:
            return None
        raise ConfigError(
            f"{key} cannot be None; give a {_type_name(base)} (e.g. --{key}={FIELDS[key].default!r})"
        )
    try:
        return _convert(base, raw)
    except (TypeError, ValueError, OverflowError):
        pass
    raise ConfigError(
        f"{key} expects {_type_name(base)}{' or None' if optional else ''}, "
        f"got {raw!r} (e.g. --{key}={_example(key)})"
    )


def _example(key: str) -> str:
    default = FIELDS[key].metadata["default"]
    return "name:value" if isinstance(default, dict) else repr(default)


def _type_name(t) -> str:
    if typing.get_origin(t) is typing.Union:
        return " or ".join(map(_type_name, typing.get_args(t)))
    if typing.get_origin(t) is tuple:
        return f"comma-separated {typing.get_args(t)[0].__name__}s"
    if typing.get_origin(t) is dict:
        return "comma-separated name:value pairs"
    return t.__name__


def _convert(base, raw):
    if typing.get_origin(base) is typing.Union:  # the first type that takes the value
        for t in typing.get_args(base):
            try:
                return _convert(t, raw)
            except (TypeError, ValueError, OverflowError):
                pass
        raise ValueError
    if typing.get_origin(base) is dict:  # "a:x,b:y" on the command line, a dict in a file
        if isinstance(raw, str):
            pairs = [item.split(":", 1) for item in raw.split(",") if item.strip()]
            if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
                raise ValueError
            raw = {k.strip(): v.strip() for k, v in pairs}
        if not isinstance(raw, dict):
            raise ValueError
        key_type, value_type = typing.get_args(base)
        return {_convert(key_type, k): _convert(value_type, v) for k, v in raw.items()}
    if typing.get_origin(base) is tuple:  # "20,100" on the command line, a list or tuple in a file
        items = raw.replace(" ", "").split(",") if isinstance(raw, str) else list(raw)
        return tuple(_convert(typing.get_args(base)[0], x) for x in items if x != "")
    if base is bool:
        if isinstance(raw, bool):
            return raw
        s = str(raw).strip().lower()
        if s in ("true", "1", "yes", "on"):
            return True
        if s in ("false", "0", "no", "off"):
            return False
        raise ValueError
    if isinstance(raw, bool) or (base is not str and isinstance(raw, str) and not raw.strip()):
        raise ValueError
    if base is int:
        if isinstance(raw, int):
            return raw
        v = float(raw)  # "1e4" and "5_000" are ints too; "inf", "nan" and 1.5 are not
        if not math.isfinite(v) or v != int(v):
            raise ValueError
        return int(v)
    if base is float:
        v = float(raw)
        if not math.isfinite(v):
            raise ValueError
        return v
    if base is str and isinstance(raw, str):
        return raw
    raise ValueError


def read_config_file(path: str) -> dict:
    """The assignments of a config file, as {key: value}."""
    if not os.path.isfile(path):
        raise ConfigError(
            f"config file {path!r} not found; pick one from config/ (e.g. config/shakespeare_cpu.py)"
        )
    try:
        values = runpy.run_path(path)
    except SyntaxError as e:
        raise ConfigError(
            f"{path}:{e.lineno}: {e.msg}; a config file is plain Python assignments like `max_steps = 5_000`"
        ) from None
    except Exception as e:  # NameError, ZeroDivisionError, ...: point at the line in the file
        line = next(
            (
                f.lineno
                for f in reversed(traceback.extract_tb(e.__traceback__))
                if os.path.abspath(f.filename) == os.path.abspath(path)
            ),
            "?",
        )
        raise ConfigError(
            f"{path}:{line}: {type(e).__name__}: {e}; a config file is plain Python "
            f"assignments like `max_steps = 5_000`"
        ) from None
    return {
        k: v
        for k, v in values.items()
        if not k.startswith("_") and not callable(v) and not isinstance(v, type(typing))
    }


def load_config(argv: list[str]) -> TrainConfig:
    """TrainConfig from `[config_file.py] [--key=value ...]`: file values, then overrides."""
    values: dict = {}
    for arg in argv:
        if not arg.startswith("--"):
            if not arg.endswith(".py"):
                raise ConfigError(
                    f"unexpected argument {arg!r}: give a config file ending in .py "
                    f"and overrides as --key=value"
                )
            for k, v in read_config_file(arg).items():
                if k not in FIELDS:
                    raise ConfigError(f"in {arg}: {_unknown(k)}")
                values[k] = parse_value(k, v)
            continue
        key, eq, raw = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in FIELDS:
            raise _unknown(key)
        if not eq:
            if key not in BARE_FLAG_VALUES:
                raise ConfigError(f"--{key} needs a value: --{key}=VALUE")
            raw = BARE_FLAG_VALUES[key]
        values[key] = parse_value(key, raw)
    return TrainConfig(**values)


def help_text() -> str:
    lines = [
        "usage: python train.py [config/FILE.py] [--key=value ...]",
        "",
        "Every key, its default and what it does:",
    ]
    for name, f in FIELDS.items():
        lines.append(f"  --{name}={f.metadata['default']!r}".ljust(40) + f" {f.metadata['doc']}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(help_text() if len(sys.argv) < 2 else json.dumps(load_config(sys.argv[1:]).to_dict(), indent=2))
