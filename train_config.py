"""TrainConfig: every setting of a run, with its default and a one-line doc.

A config file in config/ is plain Python assignments (`max_steps = 5_000`); command-line
`--key=value` overrides are parsed to the field's type. Unknown keys are errors that name
the closest valid key.
"""
import dataclasses
import difflib
import json
import os
import re
import runpy
import sys
import typing
from dataclasses import dataclass

from model import PRESETS, GPTConfig, preset_config


@dataclass
class TrainConfig:
    # ---- run and data
    run_name: str = "run"  # folder under out_dir for checkpoints, logs and the report
    out_dir: str = "checkpoints"  # root of all runs
    data_dir: str = "data/shakespeare"  # folder made by prepare_data.py (train.bin, val.bin, meta.json)
    seed: int = 1337  # seeds init, dropout and which windows each step draws
    # ---- model: a preset, then the non-None fields below replace its values
    model: str = "gpt2-124m"  # model preset: one of model.PRESETS
    n_layer: typing.Optional[int] = None  # transformer blocks (None: the preset's)
    n_head: typing.Optional[int] = None  # attention heads (None: the preset's)
    n_embd: typing.Optional[int] = None  # width (None: the preset's)
    block_size: typing.Optional[int] = None  # context length in tokens (None: the preset's)
    mlp_hidden: typing.Optional[int] = None  # MLP inner width, 0 = 4 x n_embd (None: the preset's)
    dropout: float = 0.0  # dropout in training (the documented 300M run used 0.1)
    bias: bool = True  # biases in Linear and LayerNorm layers
    activation_checkpointing: bool = False  # recompute blocks in backward: less memory, ~30% more compute
    # ---- batch: the global batch is what a run means; accumulation is derived
    global_batch_size: int = 512  # sequences per optimizer step, summed over ranks and micro-steps
    micro_batch_size: int = 8  # sequences per device per forward/backward
    # ---- optimizer and schedule
    max_steps: int = 100_000  # optimizer steps to train
    learning_rate: float = 6e-4  # peak learning rate, reached at the end of warmup
    min_lr: typing.Optional[float] = None  # floor of the cosine decay (None: learning_rate / 10)
    warmup_steps: int = 2_000  # linear warmup steps from learning_rate / (warmup_steps + 1)
    lr_decay_steps: typing.Optional[int] = None  # step where the cosine reaches min_lr (None: max_steps)
    weight_decay: float = 0.1  # AdamW decoupled weight decay on 2-D+ weights only
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 disables)
    # ---- hardware
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun the local rank picks N)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (auto: bf16 on GPUs that have it, else fp16; fp32 on CPU)
    compile: typing.Optional[bool] = None  # torch.compile the model (None: on for CUDA, off on CPU)
    # ---- evaluation, logging, checkpoints
    eval_interval: int = 1_000  # steps between val-loss evaluations (and at the end)
    eval_batches: int = 20  # fixed batches of micro_batch_size averaged per evaluation (in total, split over ranks)
    log_interval: int = 100  # steps between train-loss log lines
    save_interval: int = 10_000  # steps between checkpoint_step_N.pt saves (and at the end)
    save_steps: tuple = ()  # extra steps to save (and evaluate) at, comma-separated: --save_steps=16,80,200
    keep_last: int = 0  # keep only the newest N step checkpoints (0 keeps all)
    early_stopping_patience: int = 0  # stop after N evaluations without a val improvement (0: never)
    tensorboard: bool = True  # write TensorBoard scalars to the run folder
    progress_bar: bool = True  # tqdm bar over steps with ETA on rank 0, when stderr is a terminal
    # ---- actions (usually given on the command line)
    resume: str = ""  # "latest": newest checkpoint of this run; "auto": latest if any, else start fresh; or a path
    init_from: str = ""  # start a new run from this checkpoint's weights (fine-tuning)
    dry_run: bool = False  # print the plan (memory, FLOPs, time) and exit; builds nothing
    report: str = ""  # write report.md for this run folder from its metrics.jsonl and exit
    # ---- planning (--dry_run)
    plan_gpus: int = 0  # GPUs the --dry_run plan is for (0: this launch's world size)
    plan_mfu: float = 0.4  # model FLOPs utilization the --dry_run wall-time estimate assumes

    def model_config(self, vocab_size: int) -> GPTConfig:
        return preset_config(
            self.model, vocab_size=vocab_size, n_layer=self.n_layer, n_head=self.n_head,
            n_embd=self.n_embd, block_size=self.block_size, mlp_hidden=self.mlp_hidden,
            dropout=self.dropout, bias=self.bias,
            activation_checkpointing=self.activation_checkpointing)

    @property
    def run_dir(self) -> str:
        return os.path.join(self.out_dir, self.run_name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
TYPES = typing.get_type_hints(TrainConfig)
# Bare flags: `--resume` means the newest checkpoint, `--dry_run` means True.
BARE_FLAG_VALUES = {"resume": "latest", "dry_run": "True", "compile": "True", "tensorboard": "True",
                    "bias": "True", "activation_checkpointing": "True", "progress_bar": "True"}


class ConfigError(ValueError):
    pass


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, FIELDS, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else "; run `python train.py --help` for the list"
    return ConfigError(f"unknown config key {key!r}{hint}")


def parse_value(key: str, raw):
    """Convert raw (a string from the command line, or a value from a config file) to the
    type of field `key`."""
    typ = TYPES[key]
    optional = typing.get_origin(typ) is typing.Union and type(None) in typing.get_args(typ)
    base = next(t for t in typing.get_args(typ) if t is not type(None)) if optional else typ
    if raw is None or (isinstance(raw, str) and raw in ("None", "none", "null")):
        if optional:
            return None
        raise ConfigError(f"{key} cannot be None; give a {base.__name__}")
    try:
        if base is tuple:  # of ints: "20,100" on the command line, a list or tuple in a file
            items = raw.replace(" ", "").split(",") if isinstance(raw, str) else list(raw)
            return tuple(parse_value("max_steps", x) for x in items if x != "")
        if base is bool:
            if isinstance(raw, bool):
                return raw
            s = str(raw).strip().lower()
            if s in ("true", "1", "yes", "on"):
                return True
            if s in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if base is int:
            if isinstance(raw, bool):
                raise ValueError
            if isinstance(raw, int):
                return raw
            v = float(raw) if not str(raw).strip().lstrip("-").replace("_", "").isdigit() else int(raw)
            if v != int(v):
                raise ValueError
            return int(v)
        if base is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if base is str:
            if not isinstance(raw, str):
                raise ValueError
            return raw
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{key} expects {base.__name__}{' or None' if optional else ''}, "
                      f"got {raw!r} (e.g. --{key}={FIELDS[key].default!r})")


def read_config_file(path: str) -> dict:
    """The assignments of a config file, as {key: value}."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found; pick one from config/ "
                          f"(e.g. config/shakespeare_cpu.py)")
    try:
        values = runpy.run_path(path)
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: {e.msg}; a config file is plain Python assignments "
                          f"like `max_steps = 5_000`") from None
    return {k: v for k, v in values.items()
            if not k.startswith("_") and not callable(v) and not isinstance(v, type(typing))}


def load_config(argv: list[str]) -> TrainConfig:
    """TrainConfig from `[config_file.py] [--key=value ...]`: file values, then overrides."""
    values: dict = {}
    for arg in argv:
        if not arg.startswith("--"):
            if not arg.endswith(".py"):
                raise ConfigError(f"unexpected argument {arg!r}: give a config file ending in .py "
                                  f"and overrides as --key=value")
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
    cfg = TrainConfig(**values)
    if cfg.model not in PRESETS:
        raise ConfigError(f"unknown model preset {cfg.model!r}; choose one of {sorted(PRESETS)}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    if cfg.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype must be auto, float32, bfloat16 or float16, got {cfg.dtype!r}")
    for k in ("global_batch_size", "micro_batch_size", "max_steps", "eval_interval", "log_interval",
              "save_interval", "eval_batches"):
        if getattr(cfg, k) <= 0:
            raise ConfigError(f"{k} must be positive, got {getattr(cfg, k)}")
    if cfg.warmup_steps < 0 or cfg.learning_rate <= 0:
        raise ConfigError("warmup_steps must be >= 0 and learning_rate > 0")
    return cfg


def help_text() -> str:
    lines = ["usage: python train.py [config/FILE.py] [--key=value ...]", "",
             "Every key, its default and what it does:"]
    src = open(__file__).read().splitlines()
    for name, f in FIELDS.items():
        doc = next((ln.split("#", 1)[1].strip() for ln in src
                    if ln.strip().startswith(f"{name}:") and "#" in ln), "")
        lines.append(f"  --{name}={f.default!r}".ljust(40) + f" {doc}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(help_text() if len(sys.argv) < 2 else json.dumps(load_config(sys.argv[1:]).to_dict(), indent=2))
