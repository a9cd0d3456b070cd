"""report.png, the picture beside report.md: train and val loss against tokens, each
multiple-choice task's accuracy when the run scores tasks (with GPT-2's HellaSwag figures),
and, when the run is one of the documented runs, the losses its document gives.

Drawn with matplotlib's Agg canvas (no display, no pyplot state). report.py imports this
module only when it draws, so matplotlib loads only then.
"""

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from evaluation.scoring import GPT2_HELLASWAG_ACC_NORM_TOKENS, GPT2_HELLASWAG_SOURCE, split_metric_key

# The documented runs' loss figures (docs/reference_runs.md, which gives their source and
# what is wrong with them), by optimizer step. A run is one of them when its model preset,
# global batch and tokens per step are the document's.
REFERENCE_RUNS = (
    dict(
        name="documented 300M run",
        match=dict(model="300m", global_batch_size=512, tokens_per_step=1_048_576),
        train=(
            (0, 10.82),
            (2_000, 5.15),
            (10_000, 3.88),
            (25_000, 3.23),
            (50_000, 2.99),
            (75_000, 2.87),
            (100_000, 2.85),
        ),
        val=((100_000, 2.923),),
        ranges=(),
    ),
    # predictions, not measurements: ~2.8-3.2 after one epoch, 2.3-2.7 after two, 2.0-2.4 at the
    # end (their "3.5-4.0 at the start" is left out: no run starts there, as the document shows)
    dict(
        name="documented 1.2B run (predicted)",
        match=dict(model="1.2b", global_batch_size=256, tokens_per_step=262_144),
        train=(),
        val=(),
        ranges=((196_875, 2.8, 3.2), (393_750, 2.3, 2.7), (590_625, 2.0, 2.4)),
    ),
)
TRAIN, VAL = "tab:blue", "tab:orange"


def short_number(v: float) -> str:
    """Axis labels: 0, 500k, 20M, 1.5B."""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:g}{unit}"
    return f"{v:g}"


def reference_for(cfg: dict, derived: dict) -> dict | None:
    """The documented run this run's config is, if any."""
    have = {
        "model": cfg.get("model"),
        "global_batch_size": cfg.get("global_batch_size"),
        "tokens_per_step": derived.get("tokens_per_step"),
    }
    return next((r for r in REFERENCE_RUNS if r["match"] == have), None)


def task_series(evals: list) -> dict:
    """{(task, metric): [(step, value), ...]} from the eval records' task fields."""
    out = {}
    for e in evals:
        for key, value in e.items():
            split = split_metric_key(key)
            if split and isinstance(value, (int, float)):
                out.setdefault(split, []).append((e["step"], value))
    return out


def draw(path: str, train: list, evals: list, cfg: dict, derived: dict) -> list:
    """Write the picture to path (PNG, atomically by the caller's path); return a line for
    each thing marked on it besides the run's own curves (for report.md)."""
    per_step = derived.get("tokens_per_step")
    x = (lambda step: step * per_step) if per_step else (lambda step: step)
    tasks = task_series(evals)
    fig = Figure(figsize=(9, 7.5 if tasks else 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, *acc_ax = fig.subplots(2 if tasks else 1, 1, sharex=True, squeeze=False)[:, 0]
    fig.suptitle(f"{cfg.get('run_name') or 'run'}: loss" + (" and task accuracy" if tasks else ""))
    loss_ax.plot(
        [x(r["step"]) for r in train if r.get("loss") is not None],
        [r["loss"] for r in train if r.get("loss") is not None],
        color=TRAIN,
        lw=1,
        label="train loss",
    )
    val = [e for e in evals if e.get("val_loss") is not None]
    loss_ax.plot(
        [x(e["step"]) for e in val], [e["val_loss"] for e in val], color=VAL, marker=".", label="val loss"
    )
    notes = _mark_reference(loss_ax, reference_for(cfg, derived), x, max(x(r["step"]) for r in train))
    loss_ax.set_ylabel("loss")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8)
    if tasks:
        notes += _draw_tasks(acc_ax[0], tasks, x)
    (acc_ax or [loss_ax])[-1].set_xlabel("tokens" if per_step else "step")
    loss_ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: short_number(v)))
    fig.savefig(path, format="png")
    return notes


def draw_comparison(path: str, curves: list):
    """Several runs' val loss against tokens on one axis; curves: (label, tokens, losses)."""
    fig = Figure(figsize=(9, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for label, tokens, losses in curves:
        ax.plot(tokens, losses, marker=".", label=label)
    ax.set_title("val loss against tokens")
    ax.set_xlabel("tokens")
    ax.set_ylabel("val loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: short_number(v)))
    fig.savefig(path, format="png")


def _mark_reference(ax, ref: dict | None, x, last: float) -> list:
    """The documented run's figures up to this run's last token (those beyond are left out,
    so a run in progress is not squeezed into a corner)."""
    if ref is None:
        return []
    train = [(x(s), v) for s, v in ref["train"] if x(s) <= last]
    val = [(x(s), v) for s, v in ref["val"] if x(s) <= last]
    ranges = [(x(s), lo, hi) for s, lo, hi in ref["ranges"] if x(s) <= last]
    if train:
        ax.plot(
            *zip(*train), ls="none", marker="o", mfc="none", color=TRAIN, label=f"{ref['name']}: train loss"
        )
    if val:
        ax.plot(*zip(*val), ls="none", marker="x", color=VAL, label=f"{ref['name']}: val loss")
    if ranges:
        xs, lo, hi = zip(*ranges)
        mid = [(a + b) / 2 for a, b in zip(lo, hi)]
        ax.errorbar(
            xs,
            mid,
            yerr=[[m - a for m, a in zip(mid, lo)], [b - m for m, b in zip(mid, hi)]],
            ls="none",
            color="gray",
            capsize=4,
            label=f"{ref['name']}: loss range",
        )
    shown, total = (
        len(train) + len(val) + len(ranges),
        len(ref["train"]) + len(ref["val"]) + len(ref["ranges"]),
    )
    if not shown:
        return [
            f"This run's config is the {ref['name']}'s; none of its {total} documented losses falls within "
            f"this run's tokens yet (docs/reference_runs.md)."
        ]
    return [
        f"Marked: the {ref['name']}'s losses from docs/reference_runs.md ({shown} of {total}: those within "
        f"this run's tokens)."
    ]


def _draw_tasks(ax, tasks: dict, x) -> list:
    for (task, metric), points in sorted(tasks.items()):
        ax.plot(
            [x(s) for s, _ in points],
            [v for _, v in points],
            marker=".",
            ls="-" if metric == "acc_norm_tokens" else "-." if metric == "acc_norm_chars" else "--",
            label=f"{task} {metric}",
        )
    notes = []
    if any(task == "hellaswag" for task, _ in tasks):
        for size, value in GPT2_HELLASWAG_ACC_NORM_TOKENS.items():
            ax.axhline(value, color="gray", ls=":", lw=0.8)
            ax.annotate(
                f"GPT-2 {size}",
                (0, value),
                xycoords=("axes fraction", "data"),
                fontsize=7,
                color="gray",
                va="bottom",
            )
        notes.append(
            "Dotted: GPT-2's HellaSwag acc_norm_tokens, scored the same way "
            f"({GPT2_HELLASWAG_SOURCE}): "
            + ", ".join(f"{s} {v}" for s, v in GPT2_HELLASWAG_ACC_NORM_TOKENS.items())
            + "."
        )
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return notes
