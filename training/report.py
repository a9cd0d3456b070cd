"""report.md for a run folder: the step/loss table in the documented run's format.

    | Checkpoint | Step | Loss | Perplexity | Time Elapsed |

rendered from the run's metrics.jsonl (one JSON record per line, written by train.py),
then the val-loss table, a config summary and throughput. render_report() is pure;
write_report() reads the folder and writes report.md atomically.
"""

import dataclasses
import json
import math
import os
from datetime import datetime, timezone

from errors import BadInput, NotFound
from evaluation.scoring import STDERR, metric_order, split_metric_key
from model import GPTConfig, describe
from storage.atomic_files import atomic_path, write_text
from storage.checkpoint import is_step_file
from training.metrics import LOST
from training.stopping import Stop

_MARK = "†"  # flags a row whose loss comes from an earlier logged step
DATASET_LOSS = "val_loss_"  # eval-record keys of each dataset's val loss in a mixture (train.py)
PICTURE = "report.png"  # beside report.md: loss (and task accuracy) against tokens
# end reasons after which the run can go on: all but those that finish it (exit status 0)
_UNFINISHED = tuple(stop.value for stop in Stop if stop.exit_code != 0)


# ---- formatting ---------------------------------------------------------------------


def fmt_elapsed(seconds) -> str:
    """0s, 42s, 3m 05s, 14h 02m: hours alone are too coarse for CPU runs."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def fmt_loss(loss) -> str:
    return "—" if loss is None else f"{loss:.2f}"


def fmt_ppl(loss) -> str:
    """exp(loss) as the document prints it: 17.29, 172.43, 49,787."""
    if loss is None:
        return "—"
    if math.isnan(loss):
        return "nan"
    ppl = math.exp(loss) if loss < 700 else math.inf
    if math.isinf(ppl):
        return "inf"
    return f"{ppl:.2f}" if ppl < 1000 else f"{round(ppl):,}"


def fmt_sci(x) -> str:
    """6e-4 rather than 0.0006 or 6.00e-04, as learning rates are usually written."""
    if x is None:
        return "—"
    mant, exp = f"{x:.2e}".split("e")
    return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"


# ---- reading records ------------------------------------------------------------------


def latest_by_step(records: list[dict], kind: str) -> list[dict]:
    """Records of one kind, the last one per step (a resumed run repeats steps), by step."""
    out = {}
    for r in records:
        if r.get("kind") == kind and isinstance(r.get("step"), int):
            out[r["step"]] = r
    return [out[s] for s in sorted(out)]


def _train_config(records: list[dict], config: dict | None) -> dict:
    # config.json holds the resolved TrainConfig under "config" (older runs: itself); else
    # the start record's copy.
    if config:
        return config["config"] if isinstance(config.get("config"), dict) else config
    starts = [r for r in records if r.get("kind") == "start"]
    return (starts[-1].get("config") or {}) if starts else {}


def _derived(records: list[dict], config: dict | None) -> dict:
    """What the run derived at start-up (world size, accumulation, device, ...): config.json's
    "derived", else the last start record, which carries the same keys."""
    if config and isinstance(config.get("derived"), dict):
        return config["derived"]
    starts = [r for r in records if r.get("kind") == "start"]
    return starts[-1] if starts else {}


def _at_or_before(train: list[dict], step: int) -> dict | None:
    best = None
    for r in train:
        if r["step"] > step:
            break
        best = r
    return best


# ---- the tables ------------------------------------------------------------------------


def timeline_rows(
    train: list[dict],
    checkpoints: list[dict],
    warmup: int,
    final_step: int,
    ended: bool,
    evals: list[dict] | None = None,
) -> list[dict]:
    """Rows of the main table: Initial, Warmup End, Checkpoint 1..n, Final. Names that fall
    on one step share a row; Final (or Initial) wins over the others."""
    names: dict[int, list[str]] = {0: ["Initial"]}
    if 0 < warmup <= final_step:
        names.setdefault(warmup, []).append("Warmup End")
    # A checkpoint saved at the warmup's end is that row, as in the documented table.
    step_ckpts = sorted(
        {
            c["step"]
            for c in checkpoints
            if 0 < c["step"] < final_step and c["step"] != warmup and _is_step_checkpoint(c)
        }
    )
    for i, step in enumerate(step_ckpts, 1):
        names.setdefault(step, []).append(f"Checkpoint {i}")
    names.setdefault(final_step, []).append("Final" if ended else "Latest")

    rows = []
    for step in sorted(names):
        labels = names[step]
        name = next((n for n in ("Final", "Latest", "Initial") if n in labels), " / ".join(labels))
        rec = _at_or_before(train, step)
        # One batch's loss is noisy; an evaluation at this step measured the train loss
        # over a fixed set of batches, so prefer it.
        ev = next((e for e in evals or [] if e["step"] == step and e.get("train_loss") is not None), None)
        if ev is not None:
            rec = dict(
                rec or {},
                step=step,
                loss=ev["train_loss"],
                elapsed_s=ev.get("elapsed_s", (rec or {}).get("elapsed_s")),
            )
        rows.append(
            {"name": name, "step": step, "record": rec, "exact": rec is not None and rec["step"] == step}
        )
    return rows


def _is_step_checkpoint(c: dict) -> bool:
    # best_model.pt saves are not timeline rows; a record without a path trusts "best".
    path = c.get("path")
    return is_step_file(path) if path else not c.get("best", False)


def _timeline_table(rows: list[dict]) -> list[str]:
    lines = [
        "| Checkpoint | Step | Loss | Perplexity | Time Elapsed |",
        "|------------|------|------|------------|--------------|",
    ]
    notes = []
    for row in rows:
        rec = row["record"]
        if rec is None:
            lines.append(f"| {row['name']} | {row['step']:,} | — | — | — |")
            notes.append(f"- {row['name']} (step {row['step']:,}): no train loss logged at or before it.")
            continue
        step = f"{rec['step']:,}" + ("" if row["exact"] else _MARK)
        lines.append(
            f"| {row['name']} | {step} | {fmt_loss(rec.get('loss'))} | "
            f"{fmt_ppl(rec.get('loss'))} | {fmt_elapsed(rec.get('elapsed_s'))} |"
        )
        if not row["exact"]:
            notes.append(
                f"- {_MARK} {row['name']} is step {row['step']:,}; no train loss was logged "
                f"there, so the row shows the nearest logged step before it ({rec['step']:,})."
            )
    return lines + ([""] + notes if notes else [])


def _val_table(evals: list[dict]) -> list[str]:
    """Val loss and perplexity at each evaluation, and a column per task metric the run scored."""
    if not evals:
        return ["No evaluations logged."]
    finite = [e for e in evals if e.get("val_loss") is not None and math.isfinite(e["val_loss"])]
    best = min(finite, key=lambda e: e["val_loss"])["step"] if finite else None
    datasets = sorted({k for e in evals for k in e if k.startswith(DATASET_LOSS)})
    tasks = datasets + sorted({k for e in evals for k in e if split_metric_key(k)}, key=metric_order)
    names = [f"Val Loss {k.removeprefix(DATASET_LOSS)}" for k in datasets] + [
        "{} {}".format(*split_metric_key(k)) for k in tasks[len(datasets) :]
    ]
    lines = [
        "| Step | Val Loss | Val Perplexity |" + "".join(f" {n} |" for n in names),
        "|------|----------|----------------|" + "---|" * len(names),
    ]
    for e in evals:
        loss = e.get("val_loss")
        mark = " (best)" if e["step"] == best else ""
        scores = "".join(_score_cell(e, k) for k in tasks)
        lines.append(f"| {e['step']:,} | {fmt_loss(loss)}{mark} | {fmt_ppl(loss)} |{scores}")
    return lines


def _score_cell(e: dict, key: str) -> str:
    """A loss, or an accuracy with its standard error when the record has one: 0.2931 ± 0.0091."""
    value, err = e.get(key), e.get(key + STDERR)
    if not isinstance(value, (int, float)):
        return " — |"
    return f" {value:.4f}" + (f" ± {err:.4f}" if isinstance(err, (int, float)) else "") + " |"


def _model_config(saved: dict) -> GPTConfig:
    """The run's GPTConfig from its start record (fields this version lacks left out)."""
    known = {f.name for f in dataclasses.fields(GPTConfig)}
    return GPTConfig(**{k: v for k, v in saved.items() if k in known})


def _config_lines(cfg: dict, derived: dict) -> list[str]:
    model_cfg = derived.get("model_config") or {}
    get = cfg.get
    ranks = "processes" if str(derived.get("device", get("device", ""))).startswith("cpu") else "GPUs"
    lines = []
    if model_cfg:
        mlp = model_cfg.get("mlp_hidden") or 4 * model_cfg.get("n_embd", 0)
        lines.append(
            f"- Model: `{get('model', '?')}`, {model_cfg.get('n_layer')} layers x {model_cfg.get('n_embd', 0):,} "
            f"wide, {model_cfg.get('n_head')} heads, MLP {mlp:,}, context {model_cfg.get('block_size', 0):,}, "
            f"vocab {model_cfg.get('vocab_size', 0):,}; {describe(_model_config(model_cfg))}"
        )
    elif get("model"):
        lines.append(f"- Model: `{get('model')}`")
    if derived.get("params") is not None:
        head = "tied head counted once" if model_cfg.get("tie_embeddings", True) else "untied head"
        lines.append(f"- Parameters: {derived['params']:,} ({head})")
    for d in derived.get("datasets") or []:  # what the run draws from each dataset
        lines.append(
            f"- Data: `{d['data_dir']}`, weight {d['weight']:.2f}: {d['tokens']:,.0f} tokens, "
            f"{d['epochs']:.2f} epochs"
        )
    if get("global_batch_size") is not None:
        split = ""
        if derived.get("accumulation") is not None and derived.get("world_size") is not None:
            split = (
                f" ({get('micro_batch_size')} micro x {derived['world_size']} {ranks} x "
                f"{derived['accumulation']} accumulation)"
            )
        tps = f", {derived['tokens_per_step']:,} tokens/step" if derived.get("tokens_per_step") else ""
        lines.append(f"- Batch: {get('global_batch_size'):,} sequences per step{split}{tps}")
    if get("learning_rate") is not None:  # min_lr and lr_decay_steps as the run resolved them
        decay = f"{get('lr_decay_steps'):,}" if get("lr_decay_steps") else "max_steps"
        shape = (
            f"constant, then a linear decay over the last {get('decay_fraction')} of the steps"
            if get("lr_schedule") == "wsd"
            else "cosine decay"
        )
        lines.append(
            f"- LR schedule ({get('lr_schedule', 'cosine')}): linear warmup to {fmt_sci(get('learning_rate'))} "
            f"over {get('warmup_steps', 0):,} steps, {shape} to {fmt_sci(get('min_lr'))} at step "
            f"{decay} (max_steps {get('max_steps', 0):,})"
        )
    if get("weight_decay") is not None:
        adamw = (
            f"AdamW, betas ({get('beta1')}, {get('beta2')}), eps {fmt_sci(get('eps'))}, "
            f"weight decay {get('weight_decay')}"
        )
        lines.append(
            f"- Optimizer: Muon on the blocks' matrices (lr {fmt_sci(get('muon_lr'))}, "
            f"{get('muon_adjust_lr')} scaling, momentum {get('muon_momentum')}, {get('muon_ns_steps')} "
            f"Newton-Schulz steps, weight decay {get('muon_weight_decay')}, same schedule shape); "
            f"{adamw} for the rest; grad clip {get('grad_clip')}"
            if get("optimizer") == "muon"
            else f"- Optimizer: {adamw}, grad clip {get('grad_clip')}"
        )
    lines.append(
        f"- Dropout: {get('dropout', model_cfg.get('dropout'))}; dtype: {derived.get('dtype', get('dtype'))}; "
        f"world size: {derived.get('world_size', '?')}; device: {derived.get('device', get('device'))}"
    )
    return lines


def _throughput_lines(records: list[dict], train: list[dict]) -> list[str]:
    # The first train record of each launch carries compile and warm-up time: leave it out.
    firsts, after_start = set(), True
    for r in records:
        if r.get("kind") == "start":
            after_start = True
        elif r.get("kind") == "train" and after_start:
            firsts.add(id(r))
            after_start = False
    steady = [r for r in train if id(r) not in firsts and r.get("tokens_per_s") is not None] or train
    tps = [r["tokens_per_s"] for r in steady if r.get("tokens_per_s") is not None]
    mfu = [r["mfu"] for r in steady if r.get("mfu") is not None]
    mem = [r["peak_mem_gib"] for r in train if r.get("peak_mem_gib") is not None]
    last = train[-1]
    lines = [
        f"- Mean tokens/s: {sum(tps) / len(tps):,.0f}" if tps else "- Mean tokens/s: n/a",
        f"- Mean MFU: {100 * sum(mfu) / len(mfu):.1f}%" if mfu else "- Mean MFU: n/a (unknown device peak)",
        f"  (over {len(steady):,} logged steps, the first of each launch left out)",
    ]
    if mem:
        lines.append(f"- Peak memory: {max(mem):.2f} GiB")
    if last.get("tokens") is not None:
        lines.append(f"- Tokens seen: {last['tokens']:,}")
    return lines


def _time_lines(records: list[dict], end: dict | None) -> list[str]:
    """Training time (the run's own clock, carried in checkpoints) and the wall time its
    launches ran, whose difference is start-ups and the steps redone after each restart."""
    elapsed = [r["elapsed_s"] for r in records if isinstance(r.get("elapsed_s"), (int, float))]
    training = end["elapsed_s"] if end and end.get("elapsed_s") is not None else max(elapsed, default=None)
    lines = [f"- Training time: {fmt_elapsed(training)}"]
    spans, begin, last = [], None, None
    for r in records:
        t = r.get("time")
        if not isinstance(t, (int, float)):
            continue
        if r.get("kind") == "start":
            if begin is not None:
                spans.append(last - begin)
            begin = t
        last = t
    if begin is not None and training is not None and last > begin:
        spans.append(last - begin)
        wall = sum(spans)
        lines.append(
            f"- Wall time of its {len(spans)} launch(es): {fmt_elapsed(wall)}, of which "
            f"{fmt_elapsed(max(0.0, wall - training))} was not training (start-ups, evaluations "
            f"before the first step, and steps redone after restarts)"
        )
    lines.append(
        f"- End: {end.get('reason', 'unknown')} at step {end['step']:,}"
        if end
        else "- End: no end record (still running, or stopped without one)"
    )
    return lines


def _event_lines(records: list[dict], last_train: dict) -> list[str]:
    """Steps whose update was not applied, and loss spikes, with their steps: a user can
    find the batch (a pure function of seed and step) and look at it."""
    skipped = last_train.get("skipped_steps") or 0
    lines = [f"- Updates not applied (non-finite loss or gradients, or an fp16 overflow): {skipped:,}"]
    for kind, label in (
        ("nonfinite", "Non-finite steps"),
        ("diverging", "Diverging steps"),
        ("spike", "Loss spikes"),
    ):
        events = latest_by_step(records, kind)
        if events:
            shown = ", ".join(f"{e['step']:,}" for e in events[:20])
            lines.append(
                f"- {label} ({len(events):,}): step{'s' if len(events) > 1 else ''} {shown}"
                + (", ..." if len(events) > 20 else "")
                + " (metrics.jsonl has each one)"
            )
    return lines


def render_report(
    records: list[dict], config: dict | None = None, skipped_lines: int = 0, picture: list[str] | None = None
) -> str:
    """Markdown report from metrics records (file order) and the run's config.json.
    picture: lines under the title about report.png (draw_picture)."""
    train = latest_by_step(records, "train")
    if not train:
        raise BadInput("no train records in metrics.jsonl; the run has not logged a step yet")
    cfg = _train_config(records, config)
    starts = [r for r in records if r.get("kind") == "start"]
    ends = [r for r in records if r.get("kind") == "end" and isinstance(r.get("step"), int)]
    end = ends[-1] if ends else None
    last_train = train[-1]["step"]
    final_step = end["step"] if end is not None and end["step"] >= last_train else last_train
    finished = end is not None and end["step"] == final_step and end.get("reason") not in _UNFINISHED

    # Not latest_by_step: best_model.pt and checkpoint_step_N.pt records share a step.
    checkpoints = [r for r in records if r.get("kind") == "checkpoint" and isinstance(r.get("step"), int)]
    evals = latest_by_step(records, "eval")
    rows = timeline_rows(train, checkpoints, int(cfg.get("warmup_steps") or 0), final_step, finished, evals)
    title = cfg.get("run_name") or "run"
    out = [f"# Training report: {title}", ""]
    if starts and starts[0].get("time"):
        began = datetime.fromtimestamp(starts[0]["time"], tz=timezone.utc)
        out += [f"Started {began:%Y-%m-%d %H:%M} UTC; {len(starts)} launch(es).", ""]
    if picture:
        out += [*picture, ""]
    out += [
        "## Training Timeline",
        "",
        *_timeline_table(rows),
        "",
        "Loss is the train loss at that step: the mean over the evaluation's fixed train "
        "batches where an evaluation ran there, else the loss of the step's batch before "
        "its update; perplexity is exp(loss).",
        "",
        "## Validation",
        "",
        *_val_table(evals),
        "",
        "## Configuration",
        "",
        *_config_lines(cfg, _derived(records, config)),
        "",
        "## Throughput",
        "",
        *_throughput_lines(records, train),
        "",
        "## Time",
        "",
        *_time_lines(records, end),
        "",
        "## Steps that went wrong",
        "",
        *_event_lines(records, train[-1]),
    ]
    lost = [r.get("step") for r in records if r.get("kind") == LOST]
    if lost:
        out += [
            "",
            f"Note: metrics.jsonl was deleted while the run trained, and started again at step "
            f"{lost[-1]:,}: the records before that are lost (the checkpoints are not), so this "
            f"report covers less of the run.",
        ]
    if skipped_lines:
        out += [
            "",
            f"Note: {skipped_lines} unreadable line(s) of metrics.jsonl were skipped "
            f"(a run killed mid-write leaves a partial line).",
        ]
    return "\n".join(out) + "\n"


def read_metrics(path: str) -> tuple[list[dict], int]:
    """Records of a metrics.jsonl and the number of lines that did not parse."""
    records, bad = [], 0
    with open(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad += 1
    return records, bad


def write_report(run_dir: str) -> str:
    """Write <run_dir>/report.md from its metrics.jsonl (and config.json); return its path."""
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(metrics):
        raise NotFound(
            f"no metrics.jsonl in {run_dir!r}: give a run folder "
            f"(out_dir/run_name) that train.py has logged into"
        )
    records, bad = read_metrics(metrics)
    if not records:
        raise BadInput(f"{metrics} has no records: the run has not logged anything yet")
    config = None
    config_path = os.path.join(run_dir, "config.json")
    if os.path.isfile(config_path):
        with open(config_path) as fh:
            config = json.load(fh)
    path = os.path.join(run_dir, "report.md")
    picture = draw_picture(run_dir, records, config)
    write_text(path, render_report(records, config, skipped_lines=bad, picture=picture))
    return path


def write_comparison(run_dirs: list[str]) -> str:
    """Runs side by side (`train.py --report=RUN1,RUN2`): each run's report.md, and
    comparison.md with comparison.png (every run's val loss against tokens) in the folder
    that holds them all; the path of comparison.md."""
    rows, curves = [], []
    for run_dir in run_dirs:
        write_report(run_dir)
        records, _ = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
        config = None
        if os.path.isfile(os.path.join(run_dir, "config.json")):
            with open(os.path.join(run_dir, "config.json")) as fh:
                config = json.load(fh)
        cfg, derived = _train_config(records, config), _derived(records, config)
        evals = [e for e in latest_by_step(records, "eval") if e.get("val_loss") is not None]
        per_step = derived.get("tokens_per_step") or 0
        label = f"{os.path.basename(os.path.normpath(run_dir))} ({_optimizer_and_schedule(cfg)})"
        curves.append((label, [e["step"] * per_step for e in evals], [e["val_loss"] for e in evals]))
        last = evals[-1] if evals else {}
        rows.append(
            f"| {label} | {last.get('step', 0):,} | {last.get('step', 0) * per_step:,} | "
            + (f"{last['val_loss']:.4f} | {min(e['val_loss'] for e in evals):.4f}" if evals else "— | —")
            + f" | {fmt_elapsed(last.get('elapsed_s'))} |"
        )
    folder = os.path.commonpath([os.path.abspath(d) for d in run_dirs])
    with atomic_path(os.path.join(folder, "comparison.png")) as tmp:
        from training import report_plot

        report_plot.draw_comparison(tmp, curves)
    path = os.path.join(folder, "comparison.md")
    write_text(
        path,
        "\n".join(
            [
                "# Runs compared",
                "",
                "![Val loss against tokens](comparison.png)",
                "",
                "| Run (optimizer, schedule) | Last eval step | Tokens | Last val loss | Best val loss | Time |",
                "|---|---|---|---|---|---|",
                *rows,
                "",
            ]
        ),
    )
    return path


def _optimizer_and_schedule(cfg: dict) -> str:
    return f"{cfg.get('optimizer', 'adamw')}, {cfg.get('lr_schedule', 'cosine')}"


def draw_picture(run_dir: str, records: list[dict], config: dict | None) -> list[str]:
    """report.png in run_dir (written whole or not at all) and report.md's lines about it.
    Without matplotlib the report goes on without a picture and says how to get one."""
    train = latest_by_step(records, "train")
    if not train:
        return []  # render_report says why there is no report
    try:
        from training import report_plot
    except ImportError:
        return [
            f"No picture: matplotlib is not installed (`pip install matplotlib`, then "
            f"`python train.py --report={run_dir}`)."
        ]
    with atomic_path(os.path.join(run_dir, PICTURE)) as tmp:
        notes = report_plot.draw(
            tmp,
            train,
            latest_by_step(records, "eval"),
            _train_config(records, config),
            _derived(records, config),
        )
    return [f"![Loss against tokens]({PICTURE})", *([""] + notes if notes else [])]
