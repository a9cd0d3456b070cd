"""One error path (errors.py): every entry point prints a UserError as one line and exits 1;
anything else, a bug in this code, torch or CUDA, keeps its traceback."""

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, TEXT, tmpfs

import evaluate
import export
import prepare_data
import sample
import train
from errors import BadInput, CannotWrite, MissingDependency, NotFound, UserError, run_cli
from storage import checkpoint
from storage.weights import resolve_checkpoint

# Every entry point's main and a user error it meets: each one line, exit status 1.
USER_ERRORS = {
    "train.py": (train.main, ["--n_layr=2"], "unknown config key 'n_layr'; did you mean 'n_layer'?"),
    "sample.py": (sample.main, ["--checkpoint=/nonexistent/run"], "no checkpoint at '/nonexistent/run'"),
    "evaluate.py": (
        evaluate.main,
        ["--checkpoint=/x", "--task=/no/task.jsonl"],
        "task file '/no/task.jsonl'",
    ),
    "export.py": (export.main, ["--checkpoint=/nonexistent.pt", "--out=/tmp/never"], "no checkpoint at"),
    "prepare_data.py": (prepare_data.main, ["--input=/no/such.txt", "--name=x"], "--input '/no/such.txt'"),
    "storage.checkpoint": (checkpoint.main, ["/no/run"], "no run folder at '/no/run'"),
}


@pytest.mark.parametrize("entry", sorted(USER_ERRORS))
def test_every_entry_point_prints_a_user_error_as_one_line_and_exits_1(entry):
    main, argv, says = USER_ERRORS[entry]
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    message = e.value.code  # SystemExit with a string: printed to stderr, exit status 1
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message
    assert says in message, message


@pytest.mark.parametrize("entry", sorted(USER_ERRORS))
def test_every_entry_point_runs_through_run_cli(entry):
    path = os.path.join(ROOT, *entry.split(".")) + ".py" if entry.startswith("storage") else entry
    source = open(os.path.join(ROOT, path)).read()
    assert source.rstrip().endswith('if __name__ == "__main__":\n    run_cli(main)'), entry


def test_a_real_bug_keeps_its_traceback(tmp_path):
    """A RuntimeError from torch (a CUDA fault, a shape bug) is not a user's error: evaluate.py
    used to print it as one line; now the traceback says where it came from."""
    code = (
        "import runpy, sys, torch\n"
        "from storage import weights\n"
        "def load(*args): return torch.zeros(2, 3) @ torch.zeros(2, 3)\n"  # what torch raises for a bug
        "weights.find_and_load = load\n"
        f"sys.argv = ['evaluate.py', '--checkpoint={tmp_path}', '--task={tmp_path / 'task.jsonl'}']\n"
        "runpy.run_path('evaluate.py', run_name='__main__')\n"
    )
    (tmp_path / "task.jsonl").write_text('{"context": "x", "choices": ["a", "b"], "label": 0}\n')
    (tmp_path / "checkpoint_step_1.pt").write_text("")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "in main" in done.stderr
    assert re.search(r"RuntimeError: mat1 and mat2 shapes cannot be multiplied", done.stderr), done.stderr


def test_a_bug_inside_run_cli_is_raised_as_it_is(monkeypatch):
    def boom(argv):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal memory access"):
        run_cli(boom, [])
    with pytest.raises(KeyError):
        run_cli(lambda argv: {}["missing"], [])


def test_the_kinds_are_the_builtin_errors_they_refine():
    assert issubclass(BadInput, ValueError) and issubclass(NotFound, FileNotFoundError)
    assert issubclass(CannotWrite, OSError) and issubclass(MissingDependency, RuntimeError)
    assert all(issubclass(k, UserError) for k in (BadInput, NotFound, CannotWrite, MissingDependency))
    with pytest.raises(NotFound):
        resolve_checkpoint(None, "/nonexistent/out_dir")


def test_exit_statuses_pass_through():
    for returned, status in ((0, 0), (75, 75), (None, 0), (["text"], 0), ({"tasks": {}}, 0)):
        with pytest.raises(SystemExit) as e:
            run_cli(lambda argv, r=returned: r, [])
        assert e.value.code == status


def test_a_full_disk_anywhere_is_one_line(tmp_path):
    """prepare_data.py writing onto a full disk: the filesystem's own error, one line."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 20)
    with tmpfs(tmp_path / "disk", "size=16k") as disk:
        argv = [f"--input={corpus}", "--tokenizer=char", "--name=x", f"--out_dir={disk}", "--num_proc=1"]
        with pytest.raises(SystemExit) as e:
            run_cli(prepare_data.main, argv)
    assert re.fullmatch(
        r"error: \[Errno 28\] No space left on device.*; make room on that disk, or write elsewhere",
        e.value.code,
    ), e.value.code
