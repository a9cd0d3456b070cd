"""report.md: the documented step/loss table from synthetic metrics records, and report.png."""

import json
import os
import sys

import pytest

import training
from training.report import fmt_elapsed, fmt_ppl, render_report, write_report

CONFIG = dict(
    run_name="train_300m",
    model="300m",
    warmup_steps=2_000,
    max_steps=100_000,
    learning_rate=6e-4,
    min_lr=6e-5,
    lr_decay_steps=100_000,
    weight_decay=0.1,
    beta1=0.9,
    beta2=0.95,
    eps=1e-8,
    grad_clip=1.0,
    dropout=0.1,
    dtype="float16",
    global_batch_size=512,
    micro_batch_size=32,
    device="cuda",
)
MODEL = dict(
    n_layer=24, n_head=16, n_embd=1024, block_size=2048, mlp_hidden=2944, vocab_size=50257, dropout=0.1
)
HOUR = 3600.0


def start(t=1_700_000_000):
    return dict(
        kind="start",
        step=0,
        time=t,
        config=CONFIG,
        model_config=MODEL,
        params=299_220_992,
        world_size=4,
        device="cuda",
        dtype="float16",
        tokens_per_step=1_048_576,
        accumulation=4,
    )


def train(step, loss, hours, tps=49_300.0, mfu=0.4):
    return dict(
        kind="train",
        step=step,
        loss=loss,
        lr=6e-4,
        grad_norm=1.0,
        tokens_per_s=tps,
        mfu=mfu,
        peak_mem_gib=30.5,
        loss_scale=65536.0,
        skipped_steps=3,
        tokens=step * 1_048_576,
        elapsed_s=hours * HOUR,
    )


def ckpt(step, hours, best=False):
    name = "best_model.pt" if best else f"checkpoint_step_{step}.pt"
    return dict(
        kind="checkpoint", step=step, path=f"checkpoints/train_300m/{name}", elapsed_s=hours * HOUR, best=best
    )


def evalr(step, loss, hours):
    return dict(
        kind="eval",
        step=step,
        val_loss=loss,
        val_ppl=2.718281828**loss,
        train_loss=None,
        elapsed_s=hours * HOUR,
    )


def documented_run():
    """The 300M document's timeline; warmup end (2,000) is not logged exactly, and the run
    is killed after step 30,000 and resumed from the 25,000 checkpoint."""
    return [
        start(),
        train(0, 10.8155, 0.0, tps=1_000.0, mfu=0.01),  # first record of a launch: compile time
        train(1_900, 5.15, 14.0),
        train(10_000, 3.88, 18.0),
        ckpt(10_000, 18.0),
        ckpt(10_000, 18.0, best=True),
        evalr(10_000, 3.95, 18.0),
        train(25_000, 3.23, 32.0),
        ckpt(25_000, 32.0),
        evalr(25_000, 3.30, 32.0),
        train(30_000, 3.60, 35.0),
        evalr(30_000, 3.40, 35.0),
        start(),  # resumed from checkpoint_step_25000.pt: steps repeat, time continues
        train(30_000, 3.10, 36.0, tps=2_000.0, mfu=0.02),
        evalr(30_000, 3.10, 36.0),
        train(50_000, 2.99, 50.0),
        ckpt(50_000, 50.0),
        evalr(50_000, 2.95, 50.0),
        train(75_000, 2.87, 68.0),
        ckpt(75_000, 68.0),
        evalr(75_000, 2.92, 68.0),
        ckpt(75_000, 68.0, best=True),
        train(100_000, 2.85, 72.0 + 14 / 60),
        ckpt(100_000, 72.2),
        evalr(100_000, 2.93, 72.2),
        dict(kind="end", step=100_000, elapsed_s=72.25 * HOUR, reason="max_steps"),
    ]


def table(text, header="| Checkpoint |"):
    lines = text.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith(header))
    rows = []
    for ln in lines[i + 2 :]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return lines[i], rows


def test_timeline_matches_document_format():
    text = render_report(documented_run(), None)
    header, rows = table(text)
    assert header == "| Checkpoint | Step | Loss | Perplexity | Time Elapsed |"
    assert rows == [
        ["Initial", "0", "10.82", "49,787", "0s"],
        ["Warmup End", "1,900†", "5.15", "172.43", "14h 00m"],
        ["Checkpoint 1", "10,000", "3.88", "48.42", "18h 00m"],
        ["Checkpoint 2", "25,000", "3.23", "25.28", "32h 00m"],
        ["Checkpoint 3", "50,000", "2.99", "19.89", "50h 00m"],
        ["Checkpoint 4", "75,000", "2.87", "17.64", "68h 00m"],
        ["Final", "100,000", "2.85", "17.29", "72h 14m"],
    ]
    assert "Warmup End is step 2,000; no train loss was logged there" in text


def test_resumed_duplicates_use_the_last_record():
    text = render_report(documented_run(), None)
    _, rows = table(text, "| Step | Val Loss |")
    by_step = {r[0]: r for r in rows}
    assert by_step["30,000"][1] == "3.10"  # the resumed run's eval, not the killed one's 3.40
    assert len(rows) == 6
    assert by_step["75,000"][1] == "2.92 (best)"
    assert sum("(best)" in r[1] for r in rows) == 1


def test_throughput_and_config_summary():
    text = render_report(documented_run(), None)
    # Means leave out the first record of each launch (steps 0 and the resumed 30,000).
    assert "Mean tokens/s: 49,300" in text
    assert "Mean MFU: 40.0%" in text
    assert "Tokens seen: 104,857,600,000" in text
    assert "Training time: 72h 15m" in text
    assert "End: max_steps at step 100,000" in text
    assert "24 layers x 1,024 wide, 16 heads, MLP 2,944, context 2,048" in text
    assert "Parameters: 299,220,992" in text
    assert "512 sequences per step (32 micro x 4 GPUs x 4 accumulation), 1,048,576 tokens/step" in text
    assert "linear warmup to 6e-4 over 2,000 steps, cosine decay to 6e-5 at step 100,000" in text
    assert "betas (0.9, 0.95)" in text and "world size: 4" in text


def test_the_summary_names_a_llama_shapes_parts_and_untied_head():
    records = documented_run()
    llama = dict(
        MODEL, n_kv_head=4, norm="rmsnorm", mlp="swiglu", bias=False, rope_theta=1e6, tie_embeddings=False
    )
    records = [dict(r, model_config=llama) if r["kind"] == "start" else r for r in records]  # every launch
    text = render_report(records, None)
    assert (
        "context 2,048, vocab 50,257; rotary (theta 1,000,000), RMSNorm (eps 1e-05), SwiGLU MLP, 4 k/v heads"
        in text
    )
    assert "Parameters: 299,220,992 (untied head)" in text
    assert "learned positions, LayerNorm, GELU MLP, tied head" in render_report(documented_run(), None)


def test_coinciding_rows_merge():
    recs = [
        start(),
        train(0, 4.0, 0),
        train(50, 3.0, 0.01),
        ckpt(50, 0.01),
        train(100, 2.0, 0.02),
        ckpt(100, 0.02),
        dict(kind="end", step=100, elapsed_s=80, reason="max_steps"),
    ]
    cfg = dict(CONFIG, warmup_steps=50)
    _, rows = table(render_report(recs, cfg))
    # a checkpoint at the warmup's end is the Warmup End row; numbering starts after it
    assert [r[0] for r in rows] == ["Initial", "Warmup End", "Final"]
    # Warmup that ends at (or past) the last step and a final checkpoint fold into Final.
    _, rows = table(render_report(recs, dict(CONFIG, warmup_steps=100)))
    assert [r[0] for r in rows] == ["Initial", "Checkpoint 1", "Final"]
    _, rows = table(render_report(recs, dict(CONFIG, warmup_steps=500)))
    assert [r[0] for r in rows] == ["Initial", "Checkpoint 1", "Final"]


def test_unfinished_run_says_latest():
    recs = [start(), train(0, 4.0, 0), train(10, 3.5, 0.001)]
    text = render_report(recs, dict(CONFIG, warmup_steps=0))
    _, rows = table(text)
    assert [r[0] for r in rows] == ["Initial", "Latest"]
    assert "no end record" in text


def test_formatting_helpers():
    assert [fmt_elapsed(s) for s in (0, 42, 185, 14 * HOUR + 2 * 60)] == ["0s", "42s", "3m 05s", "14h 02m"]
    assert fmt_ppl(10.8155) == "49,787" and fmt_ppl(5.15) == "172.43" and fmt_ppl(2.85) == "17.29"
    assert fmt_ppl(float("nan")) == "nan" and fmt_ppl(1e4) == "inf"


def write_lines(path, records, tail=""):
    with open(path, "w") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_write_report_is_atomic(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_lines(run / "metrics.jsonl", documented_run(), tail='{"kind": "train", "st')
    (run / "config.json").write_text(json.dumps(CONFIG))
    path = write_report(str(run))
    assert path == os.path.join(str(run), "report.md")
    assert not [f for f in os.listdir(run) if ".tmp." in f]  # written whole, through a temp file
    text = open(path).read()
    assert text.startswith("# Training report: train_300m")
    assert "1 unreadable line(s)" in text  # the partial line a kill mid-write leaves
    # A failed render leaves the previous report whole and no temp file behind.
    write_lines(run / "metrics.jsonl", [start()])
    with pytest.raises(ValueError, match="no train records"):
        write_report(str(run))
    assert open(path).read() == text
    assert not [f for f in os.listdir(run) if ".tmp." in f]


def test_missing_or_empty_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl in"):
        write_report(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="has no records"):
        write_report(str(tmp_path))


def test_an_evaluation_train_loss_is_preferred_to_one_batch():
    ev = dict(evalr(100, 2.6, 0.02), train_loss=2.5)
    recs = [
        start(),
        train(0, 4.0, 0),
        evalr(0, 4.1, 0),
        train(100, 3.0, 0.02),
        ckpt(100, 0.02),
        ev,
        dict(kind="end", step=100, elapsed_s=80, reason="max_steps"),
    ]
    _, rows = table(render_report(recs, dict(CONFIG, warmup_steps=10)))
    final = next(r for r in rows if r[0] == "Final")
    assert final[2] == "2.50"  # the evaluation's estimate, not the batch's 3.00
    assert next(r for r in rows if r[0] == "Initial")[2] == "4.00"  # no train_loss there: the batch


def test_min_lr_and_decay_are_read_as_the_run_resolved_them():
    text = render_report(
        documented_run(),
        dict(
            config=dict(CONFIG, min_lr=1e-5, lr_decay_steps=80_000),
            derived=dict(world_size=4, accumulation=4, device="cuda:0"),
        ),
    )
    assert "cosine decay to 1e-5 at step 80,000" in text  # not re-derived as lr / 10 at max_steps


def test_cpu_runs_count_processes_not_gpus():
    config = dict(
        config=dict(CONFIG, device="auto"),
        derived=dict(world_size=2, accumulation=8, device="cpu", tokens_per_step=1_048_576),
    )
    text = render_report(documented_run(), config)
    assert "(32 micro x 2 processes x 8 accumulation)" in text and "GPUs" not in text


def test_time_lost_to_restarts():
    t0 = 1_700_000_000
    recs = [
        dict(start(t0), time=t0),
        dict(train(0, 4.0, 0), time=t0 + 60),
        dict(train(100, 3.0, 1.0), time=t0 + 60 + HOUR),  # killed an hour after step 100
        dict(train(150, 2.9, 1.5), time=t0 + 60 + 1.5 * HOUR),
        dict(start(t0 + 2 * HOUR), step=100, time=t0 + 2 * HOUR),  # resumed from step 100
        dict(train(150, 2.9, 1.5), time=t0 + 2.6 * HOUR),
        dict(kind="end", step=200, elapsed_s=2.0 * HOUR, reason="max_steps", time=t0 + 3.1 * HOUR),
    ]
    text = render_report(recs, CONFIG)
    # launches ran 1h 31m and 1h 06m; the run's clock says 2h of training
    assert "Training time: 2h 00m" in text
    assert "Wall time of its 2 launch(es): 2h 37m, of which 37m 00s was not training" in text


def test_a_preempted_or_stopped_run_is_latest_not_final_and_lists_bad_steps():
    recs = [
        start(),
        train(0, 4.0, 0),
        train(50, 3.0, 0.01),
        dict(kind="nonfinite", step=51, loss="nan", grad_norm="nan", in_a_row=1),
        dict(kind="spike", step=60, loss=5.0, recent_mean=3.0, ratio=1.67),
        dict(kind="end", step=61, elapsed_s=40, reason="preempted"),
    ]
    text = render_report(recs, dict(CONFIG, warmup_steps=0))
    _, rows = table(text)
    assert [r[0] for r in rows] == ["Initial", "Latest"] and rows[-1][1] == "50†"
    assert "Non-finite steps (1): step 51" in text and "Loss spikes (1): step 60" in text
    assert "End: preempted at step 61" in text


def png_size(path):
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def write_run(tmp_path, records, config):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    write_lines(run / "metrics.jsonl", records)
    (run / "config.json").write_text(json.dumps(config))
    return str(run), open(write_report(str(run))).read()


def with_tasks(records):
    return [
        dict(
            r,
            hellaswag_acc=0.25 + r["step"] / 1e7,
            hellaswag_acc_stderr=0.0043,
            hellaswag_acc_norm_tokens=0.26 + r["step"] / 1e7,
            hellaswag_acc_norm_chars=0.27 + r["step"] / 1e7,
        )
        if r["kind"] == "eval"
        else r
        for r in records
    ]


def test_the_picture_has_loss_task_accuracy_and_the_documented_run_s_losses(tmp_path):
    run, text = write_run(tmp_path, with_tasks(documented_run()), CONFIG)
    width, height = png_size(os.path.join(run, "report.png"))
    assert "![Loss against tokens](report.png)" in text
    assert "Marked: the documented 300M run's losses from docs/reference_runs.md (8 of 8" in text
    assert (
        "Dotted: GPT-2's HellaSwag acc_norm_tokens, scored the same way (llm.c dev/vislog.ipynb): "
        "124M 0.2945, 350M 0.3752, 774M 0.432, 1.5B 0.4889." in text
    )
    header, rows = table(text, "| Step | Val Loss |")
    assert header == (
        "| Step | Val Loss | Val Perplexity | hellaswag acc | hellaswag acc_norm_tokens | hellaswag acc_norm_chars |"
    )
    assert rows[-1] == ["100,000", "2.93", "18.73", "0.2600 ± 0.0043", "0.2700", "0.2800"]
    # without tasks: one panel (a shorter picture), no GPT-2 lines, no task columns
    plain, text = write_run(tmp_path, documented_run(), CONFIG)
    assert png_size(os.path.join(plain, "report.png"))[1] < height and "GPT-2" not in text
    assert table(text, "| Step | Val Loss |")[0] == "| Step | Val Loss | Val Perplexity |"


def test_only_the_documented_losses_within_the_run_are_marked_and_only_for_its_config(tmp_path):
    early = [r for r in documented_run() if r.get("step", 0) <= 10_000 and r["kind"] != "end"]
    _, text = write_run(tmp_path, early, CONFIG)
    assert "documented 300M run's losses from docs/reference_runs.md (3 of 8: those within" in text
    _, text = write_run(tmp_path, documented_run(), dict(CONFIG, model="gpt2-124m"))
    assert "Marked" not in text and "![Loss against tokens](report.png)" in text


def test_the_documented_losses_drawn_are_the_ones_docs_reference_runs_md_gives():
    from training.report_plot import REFERENCE_RUNS

    with open(
        os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "reference_runs.md")
    ) as fh:
        _, rows = table(fh.read())  # the 300M document's step/loss table
    assert REFERENCE_RUNS[0]["train"] == tuple((int(r[1].replace(",", "")), float(r[2])) for r in rows)


def test_without_matplotlib_the_report_says_how_to_get_the_picture(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "training.report_plot", raising=False)
    monkeypatch.delattr(training, "report_plot", raising=False)  # imported before: the package holds it too
    run, text = write_run(tmp_path, documented_run(), CONFIG)
    assert "No picture: matplotlib is not installed (`pip install matplotlib`" in text
    assert "report.png" not in os.listdir(run)


def test_runs_compared_side_by_side_name_their_optimizer_and_schedule(tmp_path):
    """--report=RUN1,RUN2: each run's report, and one picture of their val losses against
    tokens with a table of where each ended; the report says which optimizer and schedule."""
    from training.report import write_comparison

    muon = dict(CONFIG, optimizer="muon", lr_schedule="wsd", decay_fraction=0.2, muon_lr=0.02)
    muon.update(muon_adjust_lr="original", muon_momentum=0.95, muon_ns_steps=5, muon_weight_decay=0.01)
    runs = []
    for name, config, final in (("adamw_run", CONFIG, 3.0), ("muon_run", muon, 2.9)):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        records = [dict(r, config=config) if r["kind"] == "start" else r for r in documented_run()]
        records = [
            dict(r, val_loss=final) if r["kind"] == "eval" and r["step"] == 100_000 else r for r in records
        ]
        write_lines(run / "metrics.jsonl", records)
        (run / "config.json").write_text(
            json.dumps(dict(config=config, derived=dict(tokens_per_step=1_048_576)))
        )
        runs.append(str(run))
    text = open(write_comparison(runs)).read()
    assert os.path.isfile(tmp_path / "runs" / "comparison.png")
    assert "| adamw_run (adamw, cosine) | 100,000 | 104,857,600,000 | 3.0000 |" in text
    assert "| muon_run (muon, wsd) | 100,000 | 104,857,600,000 | 2.9000 |" in text
    report = open(os.path.join(runs[1], "report.md")).read()
    assert "- Optimizer: Muon on the blocks' matrices (lr 2e-2, original scaling" in report
    assert (
        "LR schedule (wsd): linear warmup to 6e-4 over 2,000 steps, constant, then a linear decay" in report
    )
