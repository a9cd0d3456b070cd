import glob
import os
import sys

import pytest

import model
from training.config import (
    MODEL_FIELDS,
    ConfigError,
    TrainConfig,
    help_text,
    load_config,
    parse_value,
    read_config_file,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_overrides_are_parsed_to_the_field_type():
    cfg = load_config(
        [
            "--max_steps=5_000",
            "--learning_rate=3e-4",
            "--compile=False",
            "--min_lr=None",
            "--n_layer=6",
            "--run_name=abc",
            "--dry_run",
        ]
    )
    assert cfg.max_steps == 5000 and cfg.learning_rate == 3e-4 and cfg.compile is False
    assert cfg.min_lr is None and cfg.n_layer == 6 and cfg.run_name == "abc" and cfg.dry_run is True
    assert load_config(["--max_steps=1e4"]).max_steps == 10_000
    assert load_config(["--resume"]).resume == "latest"


def test_file_then_overrides(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("max_steps = 590_625\nlearning_rate = 3e-4\nwarmup_steps = int(0.02 * max_steps)\n")
    cfg = load_config([str(f), "--learning_rate=1e-3"])
    assert cfg.max_steps == 590_625 and cfg.warmup_steps == 11_812 and cfg.learning_rate == 1e-3


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--lerning_rate=1"], "did you mean 'learning_rate'"),
        (["--max_steps=abc"], "max_steps expects int"),
        (["--max_steps=1.5"], "max_steps expects int"),
        (["--compile=maybe"], "compile expects bool"),
        (["--learning_rate"], "needs a value"),
        (["--dtype=fp8"], "dtype must be"),
        (["--model=gpt5"], "unknown model preset"),
        (["--global_batch_size=0"], "must be positive"),
        (["--max_steps=inf"], "max_steps expects int"),
        (["--learning_rate=nan"], "learning_rate expects float"),
        (["--learning_rate=1e-3", "--min_lr=2e-3"], "min_lr=0.002 must be between 0 and learning_rate"),
        (["--resume", "--init_from=x.pt"], "cannot be used together"),
        (["--device=mps"], "not supported"),
        (["--loss_spike_factor=0.5"], "loss_spike_factor must be > 1"),
        (["--save_steps=0,10"], "save_steps must be positive"),
        (["config/nope.py"], "not found"),
        (["--eval_tasks=hellaswag"], "eval_tasks expects comma-separated name:value pairs"),
        (["--eval_tasks=9x:a.jsonl"], "eval_tasks name '9x'"),
        (["--eval_tasks=h:a.jsonl", "--eval_batches=0"], "eval_batches=0 turns evaluation off"),
        (
            ["--early_stopping_metric=hellaswag_acc_norm"],
            "must be one of val_loss .*got 'hellaswag_acc_norm'",
        ),
        (
            ["--eval_tasks=h:a.jsonl", "--early_stopping_metric=h_accuracy"],
            "one of val_loss, h_acc, h_acc_norm_tokens, h_acc_norm_chars",
        ),
        (  # the name of older versions, token-normalised, now named for what it divides by
            ["--eval_tasks=h:a.jsonl", "--early_stopping_metric=h_acc_norm"],
            "got 'h_acc_norm'; h_acc_norm is now h_acc_norm_tokens \\(normalised per token, as llm.c\\) "
            "or h_acc_norm_chars \\(per character, as lm-evaluation-harness\\)$",
        ),
        (["--eval_task_examples=-1"], "eval_task_examples must be >= 0"),
        (["stray"], "unexpected argument"),
    ],
)
def test_bad_values_are_clear_errors(argv, match):
    with pytest.raises(ConfigError, match=match):
        load_config(argv)


def test_syntax_error_in_a_file_names_file_and_line(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("max_steps = 10\nlearning_rate = = 3\n")
    with pytest.raises(ConfigError, match=r"c\.py:2: "):
        load_config([str(f)])


def test_unknown_key_in_a_file(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("max_step = 10\n")
    with pytest.raises(ConfigError, match="did you mean 'max_steps'"):
        load_config([str(f)])


def test_every_shipped_config_loads_with_each_of_its_values():
    files = sorted(glob.glob(os.path.join(ROOT, "config", "*.py")))
    assert len(files) >= 4
    for f in files:
        cfg = load_config([f])
        written = read_config_file(f)
        assert written, f
        for key, value in written.items():  # none dropped, none left as the file's raw type
            assert getattr(cfg, key) == parse_value(key, value), (f, key)


def test_documented_runs_value_for_value():
    p = load_config([os.path.join(ROOT, "config", "production_8gpu.py")])
    assert (
        p.max_steps,
        p.save_interval,
        p.log_interval,
        p.micro_batch_size,
        p.learning_rate,
        p.warmup_steps,
        p.global_batch_size,
    ) == (590_625, 20_000, 3_000, 8, 3e-4, 11_812, 256)
    assert p.global_batch_size // (p.micro_batch_size * 8) == 4  # gradient_accumulation_steps
    assert p.model_config(50257).block_size == 1024
    r = load_config([os.path.join(ROOT, "config", "train_300m.py")])
    model_cfg = r.model_config(50257)
    assert (model_cfg.n_layer, model_cfg.n_embd, model_cfg.block_size, r.dropout) == (24, 1024, 2048, 0.1)
    assert (
        r.global_batch_size,
        r.learning_rate,
        r.min_lr,
        r.weight_decay,
        r.warmup_steps,
        r.max_steps,
        r.grad_clip,
        r.beta1,
        r.beta2,
        r.eps,
        r.dtype,
        r.save_interval,
        r.eval_interval,
        r.log_interval,
    ) == (512, 6e-4, 6e-5, 0.1, 2000, 100_000, 1.0, 0.9, 0.95, 1e-8, "float16", 10_000, 1_000, 100)


def test_shipped_documented_configs_plan_as_documented():
    from training.plan import make_plan

    p = load_config([os.path.join(ROOT, "config", "production_8gpu.py")])
    plan = make_plan(p, p.plan_gpus, 50257, None)
    assert (plan["accumulation"], plan["tokens_per_step"], plan["total_tokens"]) == (
        4,
        262_144,
        154_828_800_000,
    )
    r = load_config([os.path.join(ROOT, "config", "train_300m.py")])
    plan = make_plan(r, r.plan_gpus, 50257, 12_800_000_000)
    assert (plan["accumulation"], plan["tokens_per_step"], plan["total_tokens"]) == (
        16,
        1_048_576,
        104_857_600_000,
    )


def test_help_lists_every_key_with_its_doc():
    text = help_text()
    for name in TrainConfig.__dataclass_fields__:
        assert f"--{name}=" in text
    assert "peak learning rate" in text


def test_parse_value_types():
    assert parse_value("compile", "None") is None
    assert parse_value("bias", "true") is True
    with pytest.raises(ConfigError):
        parse_value("max_steps", True)


def test_a_file_that_raises_names_file_line_and_error(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("max_steps = 10\nwarmup_steps = max_step // 50\n")
    with pytest.raises(ConfigError, match=r"c\.py:2: NameError: name 'max_step' is not defined"):
        load_config([str(f)])


def test_batch_split_is_exact_or_a_helpful_error():
    cfg = TrainConfig(global_batch_size=256, micro_batch_size=8)
    assert cfg.accumulation(8) == 4 and cfg.accumulation(1) == 32
    with pytest.raises(ConfigError, match=r"number of processes can be one of \[1, 2, 4, 8, 16, 32\]"):
        cfg.accumulation(3)
    with pytest.raises(ConfigError, match=r"micro_batch_size can be one of"):
        TrainConfig(global_batch_size=256, micro_batch_size=12).accumulation(8)


def test_cadences_each_written_once():
    cfg = TrainConfig(
        max_steps=100, eval_interval=30, save_interval=40, log_interval=25, warmup_steps=7, save_steps=(10,)
    )
    assert [s for s in range(101) if cfg.should_evaluate(s)] == [0, 10, 30, 60, 90, 100]
    # every log_interval, the end of warmup, and wherever a checkpoint is saved (the report's rows:
    # 10, 40, 80, 100, checkpointing's schedule)
    assert [s for s in range(101) if cfg.should_log(s)] == [0, 7, 10, 25, 40, 50, 75, 80, 100]


def test_model_fields_come_from_the_model_config():
    shared = {f.name for f in model.fields(model.GPTConfig)} & set(TrainConfig.__dataclass_fields__)
    assert set(MODEL_FIELDS) == shared and {"n_layer", "n_embd", "bias", "dropout"} <= shared
    cfg = load_config(["--model=tiny", "--n_embd=64", "--bias=False"])
    model_cfg = cfg.model_config(100)
    assert (model_cfg.n_layer, model_cfg.n_embd, model_cfg.bias, model_cfg.vocab_size) == (4, 64, False, 100)
    assert cfg.model_overrides() == {
        "n_embd": 64,
        "bias": False,
        "dropout": 0.0,
        "activation_checkpointing": False,
    }  # loss_chunk: resolved per run


def test_zero_eval_batches_never_evaluates_for_benchmarks():
    bench = TrainConfig(max_steps=100, save_interval=0, eval_batches=0)
    assert not any(bench.should_evaluate(s) for s in range(101))


def test_eval_tasks_from_the_command_line_and_from_a_file(tmp_path):
    cfg = load_config(
        [
            "--eval_tasks=hellaswag:data/hellaswag_val.jsonl, mine:/abs/path:with colon.jsonl",
            "--early_stopping_metric=hellaswag_acc_norm_chars",
        ]
    )
    assert cfg.eval_tasks == {"hellaswag": "data/hellaswag_val.jsonl", "mine": "/abs/path:with colon.jsonl"}
    assert cfg.early_stopping_metric == "hellaswag_acc_norm_chars" and cfg.eval_task_examples == 250
    f = tmp_path / "c.py"
    f.write_text('eval_tasks = {"hellaswag": "data/hellaswag_val.jsonl"}\neval_task_examples = 0\n')
    cfg = load_config([str(f)])
    assert cfg.eval_tasks == {"hellaswag": "data/hellaswag_val.jsonl"} and cfg.eval_task_examples == 0
    assert load_config([str(f), "--eval_tasks="]).eval_tasks == {}  # the command line empties it
    a, b = TrainConfig(), TrainConfig()
    a.eval_tasks["x"] = "y"
    assert b.eval_tasks == {}  # each config has its own dict
    assert "--eval_tasks={}" in help_text()


def test_wandb_project_without_wandb_installed_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    with pytest.raises(
        ConfigError, match=r"^wandb_project is set but wandb is not installed: pip install wandb"
    ):
        load_config(["--wandb_project=gpt"])
    assert load_config([]).wandb_project == ""  # not asked for: not needed
