import ast
import glob
import os
import re
import sys

import pytest

import model
from training.config import (
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
        for key, value in written.items():  # none dropped, none replaced by a default
            assert getattr(cfg, key) == (tuple(value) if isinstance(value, list) else value), (f, key)


def doc_tables(heading: str) -> list:
    """The rows (lists of cells) of the first table under `heading` in docs/reference_runs.md."""
    with open(os.path.join(ROOT, "docs", "reference_runs.md")) as fh:
        lines = fh.read().split(heading, 1)[1].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    rows = []
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows


def doc_value(cell: str):
    """The value a cell of the docs starts with: a number (commas allowed) or a quoted string;
    None when it starts with neither."""
    m = re.match(r'`"([^"]*)"`|"([^"]*)"|([-+0-9.e,]+)(?:\s|$|\))', cell)
    if not m:
        return None
    if m.group(3) is None:
        return m.group(1) if m.group(1) is not None else m.group(2)
    number = m.group(3).replace(",", "")
    try:
        return int(number)
    except ValueError:
        return float(number)


@pytest.mark.parametrize(
    "config,heading,at_least",
    [("train_300m.py", "### 300M: our config", 18), ("production_8gpu.py", "### Production: our config", 14)],
)
def test_each_shipped_reference_config_holds_the_values_its_doc_table_names(config, heading, at_least):
    """docs/reference_runs.md maps each documented setting to our field and value; the config
    file must set exactly that (a config or a doc edited alone breaks this)."""
    cfg = load_config([os.path.join(ROOT, "config", config)])
    checked = 0
    for _, _, fields_cell, value_cell in doc_tables(heading):
        names = re.findall(r"`(\w+)`", fields_cell)
        if not names or re.sub(r"`\w+`|,|\s", "", fields_cell):  # not a list of our fields alone
            continue
        values = re.split(r"[;,]\s+", value_cell) if len(names) > 1 else [value_cell]  # "1,000; 100"
        for name, cell in zip(names, values):
            if name in ("model", "dtype", "data_dir") or doc_value(cell) is not None:
                want = doc_value(cell)
                got = getattr(cfg, name)
                assert got == want, (config, name, got, want)
                checked += 1
    assert checked >= at_least, f"only {checked} rows of {heading} could be read"


def test_the_production_plan_gives_the_documented_batch_split_and_tokens():
    documented = {row[0]: row[1] for row in doc_tables("### Production: as documented")}
    cfg = load_config([os.path.join(ROOT, "config", "production_8gpu.py")])
    from training.plan import make_plan

    plan = make_plan(cfg, cfg.plan_gpus, 50257, None)
    assert plan["micro_batch_size"] == doc_value(documented["`per_device_train_batch_size`"])
    assert plan["accumulation"] == doc_value(documented["`gradient_accumulation_steps`"])
    assert plan["tokens_per_step"] == doc_value(documented["tokens per step"])
    assert f"{plan['total_tokens'] / 1e9:.1f}B" == documented["total tokens"].split()[0]


def default_and_doc(text: str) -> tuple:
    """`(40.0, 80.0)   GPU memory sizes...` -> ((40.0, 80.0), "GPU memory sizes..."): the
    shortest leading Python literal, then the rest."""
    for i, c in enumerate(text):
        if c == " ":
            try:
                return ast.literal_eval(text[:i]), text[i:].strip()
            except (SyntaxError, ValueError):
                continue
    raise AssertionError(f"no default and doc in {text!r}")


def test_help_shows_each_key_once_with_its_true_default_and_its_doc():
    lines = [ln for ln in help_text().splitlines() if ln.startswith("  --")]
    keys = [ln.split("=", 1)[0].strip()[2:] for ln in lines]
    assert len(keys) == len(set(keys)) and {"max_steps", "data_mix", "min_lr", "plan_gpu_memory_gib"} <= set(
        keys
    )
    defaults = TrainConfig()  # what a run that does not set the key gets
    for line, key in zip(lines, keys):
        shown, doc = default_and_doc(line.split("=", 1)[1])
        assert shown == getattr(defaults, key) and doc, key
    assert (
        "--max_steps=100000" in help_text() and "optimizer steps to train" in lines[keys.index("max_steps")]
    )


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


def test_evaluation_save_and_log_steps_follow_their_intervals_extra_steps_and_the_end():
    cfg = TrainConfig(
        max_steps=100, eval_interval=30, save_interval=40, log_interval=25, warmup_steps=7, save_steps=(10,)
    )
    assert [s for s in range(101) if cfg.should_evaluate(s)] == [0, 10, 30, 60, 90, 100]
    # every log_interval, the end of warmup, and wherever a checkpoint is saved (the report's rows:
    # 10, 40, 80, 100, checkpointing's schedule)
    assert [s for s in range(101) if cfg.should_log(s)] == [0, 7, 10, 25, 40, 50, 75, 80, 100]


def test_every_model_setting_of_the_config_reaches_the_model():
    """Each model field a user may set in a config changes the GPTConfig a run builds, and one
    left unset keeps the preset's value."""
    given = dict(
        n_layer=3,
        n_head=2,
        n_embd=64,
        block_size=48,
        mlp_hidden=96,
        bias=False,
        dropout=0.25,
        activation_checkpointing="selective",
        loss_chunk=16,
    )
    cfg = load_config(["--model=tiny"] + [f"--{k}={v}" for k, v in given.items()])
    model_cfg = cfg.model_config(100)
    assert {k: getattr(model_cfg, k) for k in given} == given and model_cfg.vocab_size == 100
    assert cfg.model_overrides() == given
    preset = model.preset_config("tiny", vocab_size=100)
    partial = load_config(["--model=tiny", "--n_embd=64"])
    assert partial.model_config(100).n_layer == preset.n_layer and partial.model_config(100).n_embd == 64
    assert partial.model_overrides() == {
        "n_embd": 64,
        "dropout": 0.0,
        "activation_checkpointing": False,
    }  # dropout and checkpointing have run defaults of their own; loss_chunk is resolved per run


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
