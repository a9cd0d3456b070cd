"""Every GPU check in one command: the CUDA tests, training throughput and MFU, and the
measured peak memory beside the planner's estimate. Meant to fit in 9 minutes on one H100,
because a GPU is lent only now and then, for minutes at a time.

    python bench/gpu_suite.py --out=gpu_suite                          # on a GPU
    python bench/gpu_suite.py --out=gpu_suite --skip=bench_memory,124m_fp16
    python bench/gpu_suite.py --out=gpu_suite --only=1.2b_bf16
    python bench/gpu_suite.py --out=gpu_suite --smoke                  # on a CPU, tiny sizes (CI)

Parts, in priority order (what is least measured, or a goal depends on, first); each runs in
a process of its own, so a crash or an OOM ends only that part, and suite.json / suite.md in
--out are rewritten after every part:
  tests               pytest -m cuda tests: one row per test (tests/test_cuda.py), and one
                      "not_collected" row per test module skipped whole at collection
  124m_bf16           train.py, gpt2-124m, micro-batch 32 x 1,024, bf16, compiled (all logits at once)
  1.2b_bf16           train.py, 1.2b, micro-batch 8 x 1,024, bf16, compiled (all logits at once)
  llama1b_bf16        train.py, llama-3.2-1b, micro-batch 2 x 4,096 (the 1.2B's 8,192 tokens), bf16,
                      compiled (all logits at once): its MFU against the 1.2B's, its peak against
                      the planner's (GQA, SwiGLU, rotary)
  124m_bf16_chunked   as 124m_bf16 with the memory-saving loss, --loss_chunk=1024
  1.2b_bf16_chunked   as 1.2b_bf16 with --loss_chunk=1024
  1.2b_bf16_selective as 1.2b_bf16 with --activation_checkpointing=selective
  1.2b_fp8            as 1.2b_bf16 with --fp8 (float8 matmuls, torchao)
  124m_fp8            as 124m_bf16 with --fp8
  1b_16gb             config/gpt2_1b_16gb.py (FSDP + offload + full checkpointing + the loss in
                      chunks) within an emulated 16 GiB card (bench/emulate_card.py)
  124m_fp16           as 124m_bf16 in fp16 with the GradScaler
  1.2b_bf16_ckpt      as 1.2b_bf16 with --activation_checkpointing=full
  124m_bf16_muon      as 124m_bf16 with --optimizer=muon (the host reads each step's verdict)
  hellaswag           bench/bench_evaluate.py: gpt2-124m scores 10,042 HellaSwag-format examples
                      (synthetic text of HellaSwag's shape: no data leaves the suite's machine), bf16
  bench_memory        bench/bench_memory.py --steps=50 (its table, a 16 GiB card emulated)
Each train.py run trains on random GPT-2 token ids (bench_train.write_random_tokens) for a
fixed number of steps; tokens/s and MFU are over the logged intervals after the first two
(compilation, warmup), peak memory is torch.cuda.max_memory_allocated, and the planner's
estimate is memory.estimate for the same config and the way train.py resolves it. A part
that would start with less than MIN_START_S left of --time_limit_s is skipped, and every
part is killed at its own cap or at the limit. Any other --key=value is passed to every
train.py run. Exit status 1 when a CUDA test failed, or a part crashed or ran past its cap.

--smoke runs the same parts on the CPU (CUDA hidden from every process) with a 2-layer,
64-wide model, 1 x 32 tokens per step and no compile: the suite's own plumbing, in CI. A
row whose GPU run takes the loss in chunks takes it in chunks of SMOKE_LOSS_CHUNK, so that
it chunks there too; the 16 GB row runs FSDP without offload (offload needs a GPU). The FP8
rows are resolved and planned as on a CPU with float8, but not run: train.py refuses --fp8
on a CPU (tests/test_fp8.py runs the fp8 wiring on one). The CUDA tests are skipped,
bench_memory too (on a CPU it takes over 5 minutes), and "peak" is the process's max RSS,
not comparable with the planner; hellaswag scores 20 examples with the smoke's model.
"""

import argparse
import dataclasses
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import torch
from bench_train import write_random_tokens

from storage.atomic_files import write_json, write_text
from training.config import ConfigError, load_config
from training.memory import GiB, estimate
from training.resolve import Machine, resolve

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

VOCAB = 50257  # write_random_tokens writes GPT-2 ids


@dataclasses.dataclass(frozen=True)
class Case:
    """One throughput run: train.py for `steps` steps, logging every `log_interval`."""

    key: str
    model: str | None  # None: the config file's
    micro_batch: int | None  # None: the config file's
    dtype: str | None  # None: the config file's
    steps: int
    log_interval: int
    cap_s: int  # the most this run may take, start-up, compilation and checkpoint saves included
    loss_chunk: int | None = None  # None: the run's default (resolve.resolve)
    activation_checkpointing: bool | str | None = None  # None: the config file's, else off
    fp8: bool | None = None  # None: the config file's, else off
    config: str | None = None  # a config file the run starts from (the settings above override it)
    card_gib: float | None = None  # run within this much GPU memory (bench/emulate_card.py)
    optimizer: str | None = None  # None: the config file's (AdamW by default)


# Fixed step counts, not counts timed from the first steps: train.py fixes max_steps at start,
# and timing a first launch would pay the compilation (the largest cost) twice. Each count
# gives 10 logged intervals after the 2 left out: 100 steps of 32,768 tokens for the 124M
# (7 s at the 450k tokens/s goal, 22 s at 150k) and 50 of 8,192 for the 1.2B (6.5 s at 50%
# MFU on an H100, 13 s at 25%; x1.33 with checkpointing). The 16 GB run moves every parameter
# and gradient over PCIe each step: 12 steps, logging every 2. Start-up and compilation come
# on top (the runs neither evaluate nor save: eval_batches=0, save_interval=0); the caps bound
# them. In priority order (the module's docstring says why).
CASES = (
    Case("124m_bf16", "gpt2-124m", 32, "bfloat16", 120, 10, 150),
    Case("1.2b_bf16", "1.2b", 8, "bfloat16", 60, 5, 240),
    Case("llama1b_bf16", "llama-3.2-1b", 2, "bfloat16", 60, 5, 240),
    Case("124m_bf16_chunked", "gpt2-124m", 32, "bfloat16", 120, 10, 150, loss_chunk=1024),
    Case("1.2b_bf16_chunked", "1.2b", 8, "bfloat16", 60, 5, 240, loss_chunk=1024),
    Case("1.2b_bf16_selective", "1.2b", 8, "bfloat16", 60, 5, 240, activation_checkpointing="selective"),
    Case("1.2b_fp8", "1.2b", 8, "bfloat16", 60, 5, 240, fp8=True),
    Case("124m_fp8", "gpt2-124m", 32, "bfloat16", 120, 10, 150, fp8=True),
    Case(
        "1b_16gb",
        None,
        None,
        None,
        12,
        2,
        300,
        config=os.path.join(ROOT, "config", "gpt2_1b_16gb.py"),
        card_gib=16,
    ),
    Case("124m_fp16", "gpt2-124m", 32, "float16", 120, 10, 150),
    Case("1.2b_bf16_ckpt", "1.2b", 8, "bfloat16", 60, 5, 240, activation_checkpointing="full"),
    Case("124m_bf16_muon", "gpt2-124m", 32, "bfloat16", 120, 10, 150, optimizer="muon"),
)
# The CPU smoke: with the GPT-2 vocab the tied head is nearly all of a tiny model's work, and
# 16-bit matmuls are far slower than fp32 on a CPU without bf16 units (docs/benchmarks.md,
# "The CPU smoke"), so it runs 5 steps: 3 intervals after the 2 left out.
SMOKE_CASE = dict(model="tiny", micro_batch=1, steps=5, log_interval=1, cap_s=90)
SMOKE_MODELS = {"llama-3.2-1b": "llama-tiny"}  # a GPU row's shape family, CPU-sized (else tiny)
SMOKE_SHAPE = dict(n_layer=2, n_head=2, n_embd=64, block_size=32)
SMOKE_LOSS_CHUNK = 8  # the smoke's 32 positions in 4 chunks, where the GPU run chunks
SMOKE_FP8 = (
    "skipped: --smoke: a CPU has no float8 tensor cores (tests/test_fp8.py runs the fp8 wiring on one)"
)
WARM_INTERVALS = 2  # logged intervals left out: step 0 (compiles) and the first log_interval steps
TESTS_CAP_S = 240
MIN_START_S = 30  # less than this left: a part could not even start up and compile
BENCH_MEMORY_ARGS = ("--steps=50",)
# HellaSwag's validation set is 10,042 examples; the goal is to score them in under 60 s.
HELLASWAG_ARGS = ("--preset=gpt2-124m", "--examples=10042", "--device=cuda")
HELLASWAG_SMOKE_ARGS = (
    "--preset=tiny",
    "--n_layer=2",
    "--n_head=2",
    "--n_embd=64",
    "--examples=20",
    "--device=cpu",
)
HELLASWAG_CAP_S, HELLASWAG_GOAL_S = 150, 60
PARTS = ("tests",) + tuple(c.key for c in CASES) + ("hellaswag", "bench_memory")
# (run, field, target, text): each measured against its target, never asserted
GOALS = (
    ("1.2b_bf16", "mfu", 0.52, "1.2b bf16 (all logits at once) at >= 52% MFU on one H100"),
    ("124m_bf16", "tokens_per_s", 500_000, "gpt2-124m at >= 500k tokens/s per H100"),
)
# (run, against, field, least ratio of their values of field, text)
SPEED_GOALS = (
    (
        "124m_bf16_chunked",
        "124m_bf16",
        "tokens_per_s",
        0.95,
        "124M: the chunked loss at >= 0.95x all at once",
    ),
    (
        "1.2b_bf16_chunked",
        "1.2b_bf16",
        "tokens_per_s",
        0.95,
        "1.2B: the chunked loss at >= 0.95x all at once",
    ),
    (
        "1.2b_bf16_selective",
        "1.2b_bf16",
        "tokens_per_s",
        0.93,
        "1.2B: selective checkpointing at most 7% slower",
    ),
    ("1.2b_fp8", "1.2b_bf16", "tokens_per_s", 1.2, "1.2B: fp8 at >= 1.2x bf16"),
    ("llama1b_bf16", "1.2b_bf16", "mfu", 1.0, "llama-3.2-1b bf16: MFU at least the GPT-2 1.2B's"),
    (
        "124m_bf16_muon",
        "124m_bf16",
        "tokens_per_s",
        1 / 1.03,
        "124M: a Muon step at most 1.03x an AdamW step",
    ),
)
PLANNER_GOAL = 0.10  # the planner within 10% of the measured peak


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog="Any other --key=value is passed to every train.py run."
    )
    p.add_argument("--out", required=True, help="folder for suite.json, suite.md and logs/")
    p.add_argument("--smoke", action="store_true", help="the CPU with tiny sizes (CI)")
    p.add_argument("--skip", default="", help=f"comma-separated parts to leave out: {', '.join(PARTS)}")
    p.add_argument("--only", default="", help="comma-separated parts to run (default: all)")
    p.add_argument("--time_limit_s", type=float, default=540, help="no part starts or runs past this")
    args, extra = p.parse_known_args(argv)
    for flag in ("skip", "only"):
        bad = [x for x in getattr(args, flag).split(",") if x and x not in PARTS]
        if bad:
            p.error(f"--{flag}: unknown part {bad[0]!r}; the parts are {', '.join(PARTS)}")
    bad = [a for a in extra if not re.fullmatch(r"--\w+=.*", a)]
    if bad:
        p.error(f"unrecognized argument {bad[0]!r}: settings for train.py are --key=value")
    if not args.smoke and not torch.cuda.is_available():
        p.error("no CUDA GPU here; --smoke runs the suite on the CPU with tiny sizes")
    args.out = os.path.abspath(args.out)  # pytest, in ROOT, writes its report there
    args.parts = [
        x for x in (args.only.split(",") if args.only else PARTS) if x and x not in args.skip.split(",")
    ]
    return args, extra


# ---- running a part: its own process group, a log file, a time limit ----------------------


@dataclasses.dataclass(frozen=True)
class Slot:
    """The seconds a part may run: its own cap, or what is left of --time_limit_s when that
    comes first. A part stopped by its cap failed; one stopped by the suite's limit did not."""

    seconds: float
    by_limit: bool


def run_process(cmd: list, timeout_s: float, log_path: str, env: dict) -> int | None:
    """cmd's exit status, or None when it ran past timeout_s and was killed (with every
    process it started: compile workers, torchrun's ranks). Its output goes to log_path."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None


def failure(rc: int | None, log_path: str, timeout_s: float) -> str:
    """The status of a part that did not exit 0: its first error line."""
    if rc is None:
        return f"failed: timed out after {timeout_s:.0f} s"
    if rc < 0:
        return f"failed: killed by signal {-rc}"
    with open(log_path, errors="replace") as fh:
        lines = [line.strip() for line in fh if line.strip()]
    said = [line for line in lines if line.startswith("error:")]  # train.py's one-line errors
    raised = [line for line in lines if re.match(r"[\w.]*(Error|Exception)\b", line)]  # a traceback's last
    line = said[0] if said else raised[-1] if raised else lines[-1] if lines else f"exit status {rc}"
    return "failed: " + line[:300]


# ---- the parts -------------------------------------------------------------------------


def cuda_tests(out: str, slot: Slot, env: dict) -> list[dict]:
    """pytest -m cuda: one row per test, from pytest's JUnit XML report."""
    log, xml = os.path.join(out, "logs", "cuda_tests.log"), os.path.join(out, "logs", "cuda_tests.xml")
    rc = run_process(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "cuda",
            "-rA",
            "-p",
            "no:cacheprovider",
            f"--junitxml={xml}",
            "tests",
        ],
        slot.seconds,
        log,
        env,
    )
    if rc is None or not os.path.exists(xml):  # the report is written only at the end
        status = (
            "skipped: --time_limit_s stopped pytest before it finished"
            if rc is None and slot.by_limit
            else failure(rc, log, slot.seconds)
        )
        return [dict(part="tests", name="pytest -m cuda", status=status)]
    rows = junit_rows(xml)
    if not any(r["part"] == "tests" for r in rows):  # exit status 5: no test is marked cuda
        rows.append(dict(part="tests", name="pytest -m cuda", status=failure(rc or 1, log, slot.seconds)))
    return rows


def junit_rows(xml: str) -> list[dict]:
    """One row per test of pytest's JUnit XML report. A module skipped whole while pytest
    collected it (pytest.importorskip at module level: tests/test_fp8.py without torchao) is
    no test: JUnit lists it as a testcase with no class, named after the module, whatever -m
    selects. Its row is a "not_collected" one, the reason as its status, so that the tests'
    rows are the tests marked cuda and no other, and a skipped module is still in sight."""
    rows = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        skipped = case.find("skipped")
        if not case.get("classname") and skipped is not None:
            said = skipped.text or skipped.get("message") or "skipped"
            reason = re.search(r"Skipped: (.*?)['\"]?\)?$", said.strip())
            rows.append(
                dict(
                    part="not_collected",
                    name=case.get("name").replace(".", "/") + ".py",
                    status="skipped: " + (reason.group(1) if reason else said)[:300],
                )
            )
            continue
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        status = "ok"
        for tag, word in (("failure", "failed"), ("error", "failed"), ("skipped", "skipped")):
            found = case.find(tag)
            if found is not None:
                status = f"{word}: {(found.get('message') or tag).strip().splitlines()[0][:300]}"
                break
        rows.append(dict(part="tests", name=name, status=status, seconds=float(case.get("time", 0))))
    return rows


def train_args(case: Case, data: str, runs: str, smoke: bool, extra: list) -> list[str]:
    values = dict(
        data_dir=data,
        out_dir=runs,
        run_name=case.key,
        model=case.model,
        micro_batch_size=case.micro_batch,
        global_batch_size=case.micro_batch,
        dtype=case.dtype,
        compile=not smoke,
        activation_checkpointing=case.activation_checkpointing,
        fp8=case.fp8,
        optimizer=case.optimizer,
        max_steps=case.steps,
        warmup_steps=case.log_interval,
        log_interval=case.log_interval,
        eval_interval=10**9,
        eval_batches=0,
        save_interval=0,
        tensorboard=False,
        progress_bar=False,
        device="cpu" if smoke else "cuda",
        **(SMOKE_SHAPE if smoke else {}),
    )
    values = {k: v for k, v in values.items() if v is not None}  # None: the config file's
    config = [case.config] if case.config else []
    if case.loss_chunk is not None:
        values["loss_chunk"] = case.loss_chunk
    if smoke:
        # the smoke runs eager on 32 positions: it takes the loss the GPU run takes (all at once,
        # or in chunks, then chunks small enough to chunk 32 positions), and no offload
        as_on_gpu = load_config(
            config + [f"--{k}={v}" for k, v in {**values, "compile": True, "device": "cuda"}.items()]
        )
        gpu_chunk = resolve(
            as_on_gpu, Machine("cuda", 1, fp8=True), as_on_gpu.model_config(VOCAB)
        ).cfg.loss_chunk
        values.update(loss_chunk=SMOKE_LOSS_CHUNK if gpu_chunk else 0, offload=False)
    return config + [f"--{k}={v}" for k, v in values.items()] + extra


def case_row(case: Case, args: list[str], card_bytes: float) -> dict:
    """A run's row before it runs: its config, and the planner's estimate for that config the
    way train.py resolves it (on one GPU of card_bytes, or the emulated card; the smoke: on
    the CPU, with float8 for the FP8 rows, which it does not run)."""
    cfg = load_config(args)
    card = case.card_gib * GiB if case.card_gib else card_bytes
    machine = (
        Machine("cpu", 1, native_bf16=False, fp8=cfg.fp8)
        if cfg.device == "cpu"
        else Machine("cuda", 1, card, fp8=cfg.fp8)
    )
    r = resolve(cfg, machine, cfg.model_config(VOCAB))
    cfg, model_cfg = r.cfg, r.model_cfg
    return dict(
        part="throughput",
        name=case.key,
        config=dict(
            model=cfg.model,
            shape=f"{model_cfg.n_layer} x {model_cfg.n_embd}, context {model_cfg.block_size}"
            if cfg.n_layer
            else None,
            micro_batch=cfg.micro_batch_size,
            dtype=cfg.dtype + (" + fp8" if cfg.fp8 else ""),
            compile=cfg.compile,
            loss_chunk=cfg.loss_chunk,
            activation_checkpointing=cfg.activation_checkpointing,
            way=r.way.name,
            card_gib=case.card_gib,
            steps=cfg.max_steps,
        ),
        planner_gib=estimate(cfg, 1, model_cfg, r.way)["total"] / GiB,
        planner_way=r.way.name,
    )


def read_records(path: str) -> list[dict]:
    """metrics.jsonl; a run killed mid-write leaves its last line cut short: stop there."""
    out = []
    if os.path.exists(path):
        with open(path) as fh:
            for line in fh:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    break
    return out


def steady_numbers(recs: list[dict]) -> dict:
    """Tokens/s, MFU and peak memory over the logged intervals after the first WARM_INTERVALS:
    each interval's seconds are its tokens over its rate, so the mean is tokens over time."""
    train = [r for r in recs if r["kind"] == "train"]
    pairs = list(zip(train[WARM_INTERVALS - 1 :], train[WARM_INTERVALS:]))
    if not pairs:
        return {}
    tokens = [b["tokens"] - a["tokens"] for a, b in pairs]
    rate = sum(tokens) / sum(t / b["tokens_per_s"] for t, (_, b) in zip(tokens, pairs))
    last = pairs[-1][1]
    start = next(r for r in recs if r["kind"] == "start")
    return dict(
        tokens_per_s=rate,
        mfu=rate * last["mfu"] / last["tokens_per_s"] if last["mfu"] is not None else None,
        peak_gib=max(b["peak_mem_gib"] for _, b in pairs),
        measured_steps=last["step"] - pairs[0][0]["step"],
        first_step_s=start["tokens_per_step"] / train[0]["tokens_per_s"],  # compilation included
        parallelism=start["config"]["parallelism"],
    )


def throughput(row: dict, case: Case, args: list[str], out: str, slot: Slot, env: dict) -> dict:
    """Run train.py (within the case's emulated card, if any); the row with its steady-state
    numbers and status."""
    run_dir = load_config(args).run_dir
    log = os.path.join(out, "logs", f"{row['name']}.log")
    within = [os.path.join("bench", "emulate_card.py"), f"--gib={case.card_gib:g}"] if case.card_gib else []
    rc = run_process([sys.executable, *within, "train.py", *args], slot.seconds, log, env)
    recs = read_records(os.path.join(run_dir, "metrics.jsonl"))
    if recs:
        write_text(
            os.path.join(out, "logs", f"{row['name']}.metrics.jsonl"),
            "".join(json.dumps(r) + "\n" for r in recs),
        )
    shutil.rmtree(run_dir, ignore_errors=True)  # a 1.2B checkpoint is 14.6 GB
    row = dict(row, **steady_numbers(recs))
    row["ratio"] = row["peak_gib"] / row["planner_gib"] if "peak_gib" in row else None
    measured = "tokens_per_s" in row
    if rc is None and slot.by_limit:  # its numbers stand if they were logged before
        row["status"] = (
            f"ok: --time_limit_s stopped it after {row['measured_steps']} measured steps"
            if measured
            else "skipped: --time_limit_s stopped it before a measured interval"
        )
    else:
        row["status"] = (
            "ok"
            if rc == 0 and measured
            else failure(rc, log, slot.seconds)
            if rc != 0
            else "failed: no interval was logged after the warmup ones; raise the case's steps"
        )
    return row


def bench_memory(out: str, slot: Slot, env: dict) -> dict:
    """bench_memory.py's table, as far as it got in the time left."""
    log = os.path.join(out, "logs", "bench_memory.log")
    rc = run_process(
        [sys.executable, os.path.join("bench", "bench_memory.py"), *BENCH_MEMORY_ARGS], slot.seconds, log, env
    )
    with open(log, errors="replace") as fh:
        table = [line.rstrip("\n") for line in fh if line.startswith("| ")]
    status = (
        "ok"
        if rc == 0
        else f"ok: --time_limit_s stopped it after {len(table)} rows"
        if rc is None and slot.by_limit
        else failure(rc, log, slot.seconds)
    )
    return dict(part="bench_memory", name="bench_memory", table=table, status=status)


def hellaswag_args(smoke: bool) -> tuple:
    return HELLASWAG_SMOKE_ARGS if smoke else HELLASWAG_ARGS


def hellaswag_row(smoke: bool) -> dict:
    return dict(part="hellaswag", name="hellaswag", args=" ".join(hellaswag_args(smoke)))


def hellaswag(out: str, slot: Slot, env: dict, smoke: bool) -> dict:
    """bench_evaluate.py's figures: examples, seconds, examples/s."""
    log, figures = os.path.join(out, "logs", "hellaswag.log"), os.path.join(out, "logs", "hellaswag.json")
    rc = run_process(
        [
            sys.executable,
            os.path.join("bench", "bench_evaluate.py"),
            *hellaswag_args(smoke),
            f"--json={figures}",
        ],
        slot.seconds,
        log,
        env,
    )
    row = hellaswag_row(smoke)
    if rc == 0 and os.path.exists(figures):
        with open(figures) as fh:
            row.update(
                {
                    k: v
                    for k, v in json.load(fh).items()
                    if k in ("preset", "examples", "seconds", "examples_per_s", "dtype", "rows_tokens")
                }
            )
        return dict(row, status="ok")
    stopped = rc is None and slot.by_limit
    return dict(
        row, status="skipped: --time_limit_s stopped it" if stopped else failure(rc, log, slot.seconds)
    )


# ---- the report ----------------------------------------------------------------------


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def goal_lines(suite: dict, rows: list[dict]) -> list[str]:
    """Each goal beside what this run measured (goals are measured here, never asserted)."""
    if suite["smoke"]:
        return ["Not measured: a CPU smoke run."]
    runs = {r["name"]: r for r in rows if r["part"] == "throughput"}
    lines = []
    for key, field, target, text in GOALS:
        value = runs.get(key, {}).get(field)
        shown = (
            "not measured"
            if value is None
            else (f"{value:.1%}" if field == "mfu" else f"{value:,.0f} tokens/s")
        )
        verdict = "" if value is None else " (met)" if value >= target else " (not met)"
        lines.append(f"- {text}: {shown}{verdict}")
    for key, against, field, target, text in SPEED_GOALS:
        a, b = runs.get(key, {}).get(field), runs.get(against, {}).get(field)
        if a is None or b is None:
            lines.append(f"- {text}: not measured")
            continue
        each = f"{a:.1%} vs {b:.1%} MFU" if field == "mfu" else f"{a:,.0f} vs {b:,.0f} tokens/s"
        shown = f"{a / b:.2f}x ({each})"
        verdict = " (met)" if a / b >= target else " (not met)"
        lines.append(f"- {text}: {shown}{verdict}")
    ratios = {name: r["ratio"] for name, r in runs.items() if r.get("ratio") is not None}
    shown = ", ".join(f"{name} {ratio:.2f}" for name, ratio in ratios.items())
    verdict = " (met)" if all(abs(x - 1) <= PLANNER_GOAL for x in ratios.values()) else " (not met)"
    lines.append(
        f"- planner within {PLANNER_GOAL:.0%} of the measured peak (peak / planner): "
        + (shown + verdict if ratios else "not measured")
    )
    seconds = next((r.get("seconds") for r in rows if r["part"] == "hellaswag"), None)
    lines.append(
        f"- HellaSwag's 10,042 examples scored by gpt2-124m in under {HELLASWAG_GOAL_S} s: "
        + (
            "not measured"
            if seconds is None
            else f"{seconds:.1f} s" + (" (met)" if seconds < HELLASWAG_GOAL_S else " (not met)")
        )
    )
    return lines


def markdown(suite: dict, rows: list[dict]) -> str:
    cell = lambda s: str(s).replace("|", "/")  # noqa: E731  (a status may quote a "|")
    lines = [
        f"# GPU suite: {suite['device']}",
        "",
        f"torch {suite['torch']} | {suite['date']} | {suite['seconds']:.0f} s of a {suite['time_limit_s']:.0f} s "
        f"limit | `{suite['command']}`",
        "",
    ]
    tests = [r for r in rows if r["part"] == "tests"]
    if tests:
        lines += ["## CUDA tests", "", "| test | status | seconds |", "|---|---|---|"]
        lines += [f"| {r['name']} | {cell(r['status'])} | {_num(r.get('seconds'), '.1f')} |" for r in tests]
        lines.append("")
    skipped_modules = [r for r in rows if r["part"] == "not_collected"]
    if skipped_modules:
        lines += ["Test modules skipped whole at collection (any CUDA tests in them did not run):", ""]
        lines += [f"- {r['name']}: {r['status'].removeprefix('skipped: ')}" for r in skipped_modules]
        lines.append("")
    runs = [r for r in rows if r["part"] == "throughput"]
    if runs:
        lines += [
            "## Throughput and memory",
            "",
            "| run | model | micro-batch | dtype | compile | loss_chunk | act. ckpt | way | tokens/s | MFU | "
            "peak GiB | planner GiB | peak / planner | status |",
            "|---|" + "---|" * 13,
        ]
        for r in runs:
            c = r["config"]
            model = c["model"] + (f" ({c['shape']})" if c["shape"] else "")
            way = c["way"] + (f", within {c['card_gib']:g} GiB" if c["card_gib"] else "")
            lines.append(
                f"| {r['name']} | {model} | {c['micro_batch']} | {c['dtype']} | {c['compile']} | "
                f"{c['loss_chunk']} | {c['activation_checkpointing']} | {way} | "
                f"{_num(r.get('tokens_per_s'), ',.0f')} | {_num(r.get('mfu'), '.1%')} | "
                f"{_num(r.get('peak_gib'), '.2f')} | {r['planner_gib']:.2f} | "
                f"{_num(r.get('ratio'), '.2f')} | {cell(r['status'])} |"
            )
        lines.append("")
    for r in (r for r in rows if r["part"] == "hellaswag"):
        lines += [
            f"## Multiple-choice scoring: bench/bench_evaluate.py {r['args']}",
            "",
            "| model | examples | dtype | seconds | examples/s | status |",
            "|---|---|---|---|---|---|",
            f"| {r.get('preset', '-')} | {_num(r.get('examples'), ',')} | {r.get('dtype', '-')} | "
            f"{_num(r.get('seconds'), '.1f')} | {_num(r.get('examples_per_s'), ',.1f')} | "
            f"{cell(r['status'])} |",
            "",
        ]
    for r in (r for r in rows if r["part"] == "bench_memory"):
        lines += ["## bench/bench_memory.py " + " ".join(BENCH_MEMORY_ARGS), "", f"status: {r['status']}", ""]
        if r.get("table"):
            lines += [
                "| model | case | planner (GiB) | measured (GiB) | measured / planner |",
                "|---|---|---|---|---|",
                *r["table"],
                "",
            ]
    return "\n".join(lines + ["## Goals", "", *goal_lines(suite, rows), ""])


def write_outputs(out: str, suite: dict, rows: list[dict]):
    """suite.json and suite.md as they stand: a suite killed later still leaves these."""
    suite["seconds"] = time.time() - suite["started"]
    write_json(os.path.join(out, "suite.json"), dict(suite, rows=rows))
    write_text(os.path.join(out, "suite.md"), markdown(suite, rows))


def describe(row: dict) -> str:
    numbers = ""
    if row.get("examples_per_s") is not None:
        numbers = (
            f" | {row['examples']:,} examples in {row['seconds']:.1f} s ({row['examples_per_s']:,.1f}/s)"
        )
    if row.get("tokens_per_s") is not None:
        numbers = (
            f" | {row['tokens_per_s']:,.0f} tokens/s | MFU {_num(row['mfu'], '.1%')} | peak "
            f"{row['peak_gib']:.2f} GiB vs planner {row['planner_gib']:.2f} GiB"
        )
    return f"{row['name']}: {row['status']}{numbers}"


# ---- the suite ---------------------------------------------------------------------------


def main(argv=None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    started, smoke = time.time(), args.smoke
    env = dict(os.environ, PYTHONUNBUFFERED="1", **({"CUDA_VISIBLE_DEVICES": ""} if smoke else {}))
    device = f"CPU ({os.cpu_count()} cores), --smoke" if smoke else torch.cuda.get_device_name(0)
    card_bytes = float("inf") if smoke else torch.cuda.get_device_properties(0).total_memory
    suite = dict(
        device=device,
        torch=torch.__version__ + (f", CUDA {torch.version.cuda}" if torch.version.cuda else ""),
        smoke=smoke,
        command=" ".join(["python bench/gpu_suite.py", *(argv or sys.argv[1:])]),
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        started=started,
        time_limit_s=args.time_limit_s,
    )
    rows = []

    def record(*part_rows):
        rows.extend(part_rows)
        write_outputs(args.out, suite, rows)
        for row in part_rows:
            print(f"[{time.time() - started:4.0f} s] {describe(row)}", flush=True)

    def time_for(row: dict, cap_s: float) -> Slot | None:
        """The time this part may run; None (and the row recorded as skipped) when too little is left."""
        left = args.time_limit_s - (time.time() - started)
        if left >= MIN_START_S:
            return Slot(min(cap_s, left), by_limit=left < cap_s)
        record(
            dict(row, status=f"skipped: {max(left, 0):.0f} s left of --time_limit_s={args.time_limit_s:g}")
        )
        return None

    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        data, runs = os.path.join(tmp, "data"), os.path.join(tmp, "runs")
        cases = [
            dataclasses.replace(c, **{**SMOKE_CASE, "model": SMOKE_MODELS.get(c.model, "tiny")})
            if smoke
            else c
            for c in CASES
            if c.key in args.parts
        ]
        try:  # every run's settings are checked before anything runs
            jobs = [(c, train_args(c, data, runs, smoke, extra)) for c in cases]
            jobs = [(c, a, case_row(c, a, card_bytes)) for c, a in jobs]
        except (ConfigError, ValueError) as e:
            sys.exit(f"error: {e}")
        print(f"{device} | torch {suite['torch']} | parts: {', '.join(args.parts)}", flush=True)
        if "tests" in args.parts:
            row = dict(part="tests", name="pytest -m cuda")
            if slot := time_for(row, TESTS_CAP_S):
                record(*cuda_tests(args.out, slot, env))
        if jobs:
            write_random_tokens(data)
        for case, train_argv, row in jobs:
            if smoke and case.fp8:
                record(dict(row, status=SMOKE_FP8))
            elif slot := time_for(row, case.cap_s):
                record(throughput(row, case, train_argv, args.out, slot, env))
        if "hellaswag" in args.parts:
            if slot := time_for(hellaswag_row(smoke), HELLASWAG_CAP_S):
                record(hellaswag(args.out, slot, env, smoke))
        if "bench_memory" in args.parts:
            row = dict(part="bench_memory", name="bench_memory")
            if smoke:
                record(dict(row, status="skipped: --smoke (on a CPU bench_memory.py takes over 5 minutes)"))
            elif slot := time_for(row, float("inf")):  # whatever time is left
                record(bench_memory(args.out, slot, env))
    write_outputs(args.out, suite, rows)
    print("\n" + markdown(suite, rows), flush=True)
    return 1 if any(r["status"].startswith("failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
