"""Time to a target val loss: steps, tokens and training time at which each optimizer and
schedule first reaches it, over several seeds.

    PYTHONPATH=. python bench/time_to_loss.py config/shakespeare_cpu.py
    PYTHONPATH=. python bench/time_to_loss.py config/shakespeare_cpu.py --max_steps=300 \\
        --warmup_steps=30 --seeds=1337,1338 --variants=adamw:cosine,muon:cosine,muon:cosine:0.5,muon:wsd

Each variant is OPTIMIZER:SCHEDULE[:FRACTION]: a run of the config with --optimizer and
--lr_schedule set, planned for FRACTION (default 1) of its max_steps. The target defaults to
the mean final val loss of the adamw:cosine runs (which always run to their end, first);
--target=X sets it. Every other run stops as soon as an evaluation reaches the target ("first
reaches" is all the table reports, so stopping there changes nothing in it), or at its end.
Evaluations come every --eval_every steps (default max_steps / 30). Any other --key=value
goes to train.py for every run. Runs go under --out (a temp folder unless given); a run
already finished there is read instead of rerun, so an interrupted benchmark continues. The
table is printed, and with --markdown=PATH appended to that file.
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from training.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = "adamw:cosine"


def parse(argv: list) -> tuple[list, dict, list]:
    """(train.py arguments, this script's options, variants)."""
    own = {"seeds", "variants", "target", "eval_every", "out", "markdown"}
    opts, passed = {}, []
    for a in argv:
        key = a[2:].split("=", 1)[0] if a.startswith("--") else None
        if key in own:
            opts[key] = a.split("=", 1)[1]
        else:
            passed.append(a)
    variants = opts.get("variants", "adamw:cosine,muon:cosine,muon:cosine:0.5,muon:wsd").split(",")
    if REFERENCE not in variants and "target" not in opts:
        raise SystemExit(
            f"error: the default target comes from {REFERENCE} runs: add it to --variants or set --target"
        )
    return passed, opts, variants


def run_one(
    passed: list, name: str, out: str, variant: str, seed: int, eval_every: int, target: float | None
):
    """Train one variant and seed; its eval records, and how long it ran (s)."""
    optimizer, schedule, *fraction = variant.split(":")
    base = load_config(passed)
    steps = max(1, round(base.max_steps * float(fraction[0] if fraction else 1)))
    args = passed + [
        f"--out_dir={out}",
        f"--run_name={name}",
        f"--optimizer={optimizer}",
        f"--lr_schedule={schedule}",
        f"--max_steps={steps}",
        f"--seed={seed}",
        f"--eval_interval={eval_every}",
        "--save_interval=0",
        "--progress_bar=False",
        "--tensorboard=False",
        f"--log_interval={eval_every}",
    ]
    metrics = os.path.join(out, name, "metrics.jsonl")
    if finished(metrics):  # a run of an earlier invocation on the same --out: read, not rerun
        return evals(metrics), 0.0, steps
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT)
    start = time.time()
    while proc.poll() is None:
        time.sleep(1)
        if target is not None and any(r["val_loss"] <= target for r in evals(metrics) if r["step"] > 0):
            proc.send_signal(signal.SIGTERM)  # train.py finishes the step and exits
            proc.wait()
    if proc.returncode not in (0, 75, -signal.SIGTERM) and not evals(metrics):
        raise SystemExit(f"error: {name} failed (exit status {proc.returncode})")
    return evals(metrics), time.time() - start, steps


def evals(path: str) -> list:
    if not os.path.isfile(path):
        return []
    with open(path) as fh:
        return [r for r in map(json.loads, fh) if r.get("kind") == "eval"]


def finished(path: str) -> bool:
    if not os.path.isfile(path):
        return False
    with open(path) as fh:
        return any(r.get("kind") == "end" for r in map(json.loads, fh))


def first_reach(records: list, target: float) -> dict | None:
    return next((r for r in records if r["step"] > 0 and r["val_loss"] <= target), None)


def table(rows: list, target: float, tokens_per_step: int, header: str) -> str:
    lines = [
        header,
        "",
        f"Target val loss {target:.4f}. Steps, tokens and training time (s) at the first evaluation "
        f"at or under it; s/step: the run's training time over its steps.",
        "",
        "| Variant | Planned steps | Seed | Final or stop val loss | Steps to target | Tokens to target | Time to target (s) | s/step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        hit = r["hit"]
        lines.append(
            f"| {r['variant']} | {r['planned']:,} | {r['seed']} | {r['last']['val_loss']:.4f} | "
            + (
                f"{hit['step']:,} | {hit['step'] * tokens_per_step:,} | {hit['elapsed_s']:.0f}"
                if hit
                else "not reached | - | -"
            )
            + f" | {r['s_per_step']:.3f} |"
        )
    lines += [
        "",
        "| Variant | Seeds reaching the target | Median steps to target | AdamW cosine's steps / these | Mean s/step | / AdamW cosine's |",
        "|---|---|---|---|---|---|",
    ]
    summary = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        hits = [r["hit"]["step"] for r in mine if r["hit"]]
        summary[variant] = (
            statistics.median(hits) if hits else None,
            statistics.mean(r["s_per_step"] for r in mine),
        )
    ref_steps, ref_time = summary.get(REFERENCE, (None, None))
    for variant, (steps, s_per_step) in summary.items():
        ratio = f"{ref_steps / steps:.2f}x" if steps and ref_steps else "-"
        cost = f"{s_per_step / ref_time:.2f}x" if ref_time else "-"
        reached = sum(1 for r in rows if r["variant"] == variant and r["hit"])
        total = sum(1 for r in rows if r["variant"] == variant)
        lines.append(
            f"| {variant} | {reached} of {total} | {steps if steps is not None else '-'} | {ratio} | {s_per_step:.3f} | {cost} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list):
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    passed, opts, variants = parse(argv)
    base = load_config(passed)
    seeds = [int(s) for s in opts.get("seeds", "1337,1338").split(",")]
    eval_every = int(opts.get("eval_every", max(1, base.max_steps // 30)))
    out = opts.get("out") or tempfile.mkdtemp(prefix="time_to_loss_")
    target = float(opts["target"]) if "target" in opts else None
    order = sorted(variants, key=lambda v: v != REFERENCE)  # the reference first: it sets the target
    rows = []
    for variant in order:
        if variant != REFERENCE and target is None:
            finals = [r["last"]["val_loss"] for r in rows if r["variant"] == REFERENCE]
            target = statistics.mean(finals)
            print(f"target: {target:.4f}, the mean final val loss of {REFERENCE}", flush=True)
        for seed in seeds:
            name = f"{variant.replace(':', '_')}_s{seed}"
            records, wall, planned = run_one(
                passed, name, out, variant, seed, eval_every, None if variant == REFERENCE else target
            )
            s_per_step = records[-1]["elapsed_s"] / max(1, records[-1]["step"])
            rows.append(
                dict(
                    variant=variant,
                    seed=seed,
                    planned=planned,
                    records=records,
                    last=records[-1],
                    s_per_step=s_per_step,
                )
            )
            print(
                f"{name}: last eval step {records[-1]['step']}, val {records[-1]['val_loss']:.4f}, {wall:.0f} s",
                flush=True,
            )
    if target is None:
        target = statistics.mean(r["last"]["val_loss"] for r in rows)
    for r in rows:
        r["hit"] = first_reach(r["records"], target)
    with open(
        os.path.join(out, rows[0]["variant"].replace(":", "_") + f"_s{rows[0]['seed']}", "config.json")
    ) as fh:
        tokens_per_step = json.load(fh)["derived"]["tokens_per_step"]
    header = f"### time_to_loss: {' '.join(argv)}"
    text = table(rows, target, tokens_per_step, header)
    print(text)
    with open(os.path.join(out, "time_to_loss.json"), "w") as fh:
        json.dump(
            dict(target=target, rows=[{k: v for k, v in r.items() if k != "records"} for r in rows]),
            fh,
            indent=1,
        )
    if "markdown" in opts:
        with open(opts["markdown"], "a") as fh:
            fh.write("\n" + text)
    print(f"runs under {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
