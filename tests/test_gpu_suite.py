"""bench/gpu_suite.py on the CPU (--smoke): every row written, the numbers read from the
runs' own logs, a crashed run failing the suite, the time limit skipping what it must.
The suite runs as the user runs it, in a process of its own."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

SUITE = os.path.join(ROOT, "bench", "gpu_suite.py")
# The runs the suite must measure (issues 9 and 15): name -> (dtype, loss_chunk, activation
# checkpointing, way). The smoke runs eager on 32 positions, but each row's loss is its GPU
# run's: all logits at once where a compiled run resolves to that, in chunks where the GPU run
# takes chunks (then of 8 positions, so that the smoke's 32 are chunked too).
RUNS = {
    "124m_bf16": ("bfloat16", 0, False, "DDP"),
    "1.2b_bf16": ("bfloat16", 0, False, "DDP"),
    "llama1b_bf16": ("bfloat16", 0, False, "DDP"),  # llama-tiny in the smoke
    "124m_bf16_chunked": ("bfloat16", 8, False, "DDP"),
    "1.2b_bf16_chunked": ("bfloat16", 8, False, "DDP"),
    "1.2b_bf16_selective": ("bfloat16", 0, "selective", "DDP + selective checkpointing"),
    "1.2b_fp8": ("bfloat16 + fp8", 0, False, "DDP"),
    "124m_fp8": ("bfloat16 + fp8", 0, False, "DDP"),
    # config/gpt2_1b_16gb.py's way, offload left out (it needs a GPU), its loss in chunks
    "1b_16gb": ("float32", 8, "full", "FSDP + activation checkpointing"),
    "124m_fp16": ("float16", 0, False, "DDP"),
    "1.2b_bf16_ckpt": ("bfloat16", 0, "full", "DDP + activation checkpointing"),
    "124m_bf16_muon": ("bfloat16", 0, False, "DDP"),
}
NOT_RUN_IN_SMOKE = {"1.2b_fp8", "124m_fp8"}  # a CPU has no float8: planned, not run


def run_suite(out, *args):
    proc = subprocess.run(
        [sys.executable, SUITE, "--smoke", f"--out={out}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,  # a loaded 2-core machine; the smoke itself limits its parts
    )
    suite = None
    if os.path.exists(os.path.join(out, "suite.json")):
        with open(os.path.join(out, "suite.json")) as fh:
            suite = json.load(fh)
    return proc, suite


def train_records(path):
    with open(path) as fh:
        return [r for r in map(json.loads, fh) if r["kind"] == "train"]


def test_the_smoke_suite_writes_every_row_from_the_runs_own_logs(tmp_path):
    out = str(tmp_path / "suite")
    proc, suite = run_suite(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert suite["smoke"] and suite["device"].startswith("CPU")
    rows = {r["name"]: r for r in suite["rows"]}

    with open(os.path.join(ROOT, "tests", "test_cuda.py")) as fh:
        cuda_tests = {f"test_cuda::{name}" for name in re.findall(r"^def (test_\w+)", fh.read(), re.M)}
    tests = [r for r in suite["rows"] if r["part"] == "tests"]
    assert {r["name"] for r in tests} == cuda_tests  # every test marked cuda, no other
    assert all(r["status"].startswith("skipped: ") for r in tests)  # CUDA is hidden from a smoke run
    # a module skipped whole at collection (tests/test_fp8.py without torchao) is no test row
    for r in (r for r in suite["rows"] if r["part"] == "not_collected"):
        assert os.path.isfile(os.path.join(ROOT, r["name"])) and r["status"].startswith("skipped: "), r

    runs = [r for r in suite["rows"] if r["part"] == "throughput"]
    assert [r["name"] for r in runs] == list(RUNS)
    for r in runs:
        c = r["config"]
        assert (c["dtype"], c["loss_chunk"], c["activation_checkpointing"], c["way"], c["compile"]) == RUNS[
            r["name"]
        ] + (False,), r["name"]
        assert r["planner_gib"] > 0
        if r["name"] in NOT_RUN_IN_SMOKE:
            assert (
                r["status"].startswith("skipped: --smoke: a CPU has no float8 tensor cores")
                and "tokens_per_s" not in r
            )
            continue
        assert r["status"] == "ok", r
        logged = train_records(os.path.join(out, "logs", f"{r['name']}.metrics.jsonl"))
        assert [x["step"] for x in logged] == [0, 1, 2, 3, 4]
        # the steady state: steps 2 to 4 (step 0 and the first interval left out)
        assert r["measured_steps"] == 3
        rates = [x["tokens_per_s"] for x in logged[2:]]
        assert min(rates) * (1 - 1e-9) <= r["tokens_per_s"] <= max(rates) * (1 + 1e-9)
        assert r["mfu"] is None  # no peak FLOP/s for a CPU
        assert r["peak_gib"] == max(x["peak_mem_gib"] for x in logged[2:]) > 0
        assert r["ratio"] == pytest.approx(r["peak_gib"] / r["planner_gib"])
    # the chunked row ran the chunked loss: the same losses up to rounding, not the same bits
    plain, chunked = (
        train_records(os.path.join(out, "logs", f"{n}.metrics.jsonl"))
        for n in ("124m_bf16", "124m_bf16_chunked")
    )
    assert [x["loss"] for x in chunked] != [x["loss"] for x in plain]
    assert [x["loss"] for x in chunked] == pytest.approx([x["loss"] for x in plain], rel=1e-3)
    assert rows["1b_16gb"]["config"]["card_gib"] == 16  # run through bench/emulate_card.py: uncapped on a CPU
    with open(os.path.join(out, "logs", "1b_16gb.log")) as fh:
        assert fh.readline().startswith("no GPU: running uncapped (a 16 GiB card is emulated only on a GPU)")
    assert rows["bench_memory"]["status"].startswith("skipped: --smoke")
    scoring = rows["hellaswag"]  # bench_evaluate.py's own figures
    assert scoring["status"] == "ok" and scoring["examples"] == 20, scoring
    assert scoring["examples_per_s"] == pytest.approx(20 / scoring["seconds"])

    with open(os.path.join(out, "suite.md")) as fh:
        md = fh.read()
    assert md.startswith(f"# GPU suite: {suite['device']}\n") and f"torch {suite['torch']}" in md
    smoke_model = {"llama1b_bf16": "llama-tiny"}  # a Llama row runs a Llama shape
    assert all(f"| {name} | {smoke_model.get(name, 'tiny')} (2 x 64, context 32) |" in md for name in RUNS)
    assert "Not measured: a CPU smoke run." in md
    assert "## Multiple-choice scoring: bench/bench_evaluate.py --preset=tiny" in md
    assert md.strip() in proc.stdout  # and the table is printed


def test_a_run_that_crashes_is_a_failed_row_the_others_still_run_and_the_exit_status_says_so(tmp_path):
    out = str(tmp_path / "suite")
    proc, suite = run_suite(out, "--only=124m_bf16,124m_fp16", "--data_dir=/nonexistent/data")
    assert proc.returncode == 1
    assert [r["name"] for r in suite["rows"]] == ["124m_bf16", "124m_fp16"]
    for r in suite["rows"]:  # train.py's own one-line error
        assert r["status"].startswith("failed: error: data folder '/nonexistent/data' not found"), r["status"]
        assert "tokens_per_s" not in r and r["ratio"] is None and r["planner_gib"] > 0


def test_parts_the_time_limit_leaves_no_room_for_are_skipped_not_failed(tmp_path):
    out = str(tmp_path / "suite")
    proc, suite = run_suite(out, "--time_limit_s=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = [r["name"] for r in suite["rows"]]
    assert names == ["pytest -m cuda", *RUNS, "hellaswag", "bench_memory"]
    assert all(
        re.fullmatch(r"skipped: [01] s left of --time_limit_s=1", r["status"])
        for r in suite["rows"][:-1]
        if r["name"] not in NOT_RUN_IN_SMOKE
    )
    assert not os.path.exists(os.path.join(out, "logs"))  # nothing ran


def test_a_bad_train_setting_is_refused_before_anything_runs(tmp_path):
    out = str(tmp_path / "suite")
    proc, suite = run_suite(out, "--n_layr=3")
    assert proc.returncode == 1 and suite is None
    assert "error: unknown config key 'n_layr'; did you mean 'n_layer'?" in proc.stderr


def test_a_module_skipped_at_collection_is_a_not_collected_row_not_a_test(tmp_path, monkeypatch):
    """pytest's JUnit report lists a module skipped whole (importorskip at module level) as a
    testcase of no class; the suite's rows keep it apart from the tests -m cuda selected."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    import gpu_suite

    folder = tmp_path / "tests"
    folder.mkdir()
    (folder / "test_needs_absent.py").write_text(
        "import pytest\npytest.importorskip('no_such_module_here')\n\n\ndef test_a():\n    pass\n"
    )
    (folder / "test_gpu.py").write_text(
        "import pytest\n\n\n@pytest.mark.cuda\ndef test_b():\n    pass\n\n\ndef test_c():\n    pass\n"
    )
    xml = tmp_path / "report.xml"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-m",
            "cuda",
            "-p",
            "no:cacheprovider",
            f"--junitxml={xml}",
            "tests",
        ],
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    rows = gpu_suite.junit_rows(str(xml))
    assert [(r["part"], r["name"]) for r in rows] == [
        ("not_collected", "tests/test_needs_absent.py"),
        ("tests", "test_gpu::test_b"),
    ]
    assert (
        rows[0]["status"]
        == "skipped: could not import 'no_such_module_here': No module named 'no_such_module_here'"
    )
    md = gpu_suite.markdown(
        dict(device="CPU", torch="x", date="d", seconds=1, time_limit_s=9, command="c", smoke=True), rows
    )
    assert "- tests/test_needs_absent.py: could not import 'no_such_module_here'" in md
