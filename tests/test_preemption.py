"""Preemption: SIGTERM or SIGUSR1 ends the step, saves, and exits asking to be requeued;
resuming continues with the same losses."""

import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, WITH_FAULTS, records, run_dir_of, torchrun_cmd

import train
from parallel.preemption import EXIT_PREEMPTED, PreemptionSignal
from storage import checkpoint as ckpt


def test_the_handler_records_the_signal_and_restores_the_previous_one():
    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionSignal() as preempt:
        assert preempt.received is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert preempt.received == signal.SIGUSR1  # the process lives on
    assert signal.getsignal(signal.SIGUSR1) is before


def preemptible_run(tiny_args, name):
    # lr_decay_steps fixes the schedule, so a run cut short and resumed to max_steps=10
    # trains exactly as one that ran to 10
    return tiny_args + [
        "--global_batch_size=8",
        "--micro_batch_size=2",
        "--dropout=0.1",
        "--max_steps=1000",
        "--lr_decay_steps=10",
        "--save_interval=500",
        f"--run_name={name}",
    ]


def signal_when_paused(proc, sig, ranks=1) -> str:
    """Send sig to proc once its `ranks` processes wait at FAULT=pause's step; the output so far."""
    seen, out = 0, []
    while seen < ranks:
        line = proc.stdout.readline()
        if not line:
            pytest.fail("the run ended before it paused:\n" + "".join(out)[-3000:])
        out.append(line)
        seen += "paused at step" in line
    proc.send_signal(sig)
    return "".join(out)


def check_resumes_exactly(tiny_args, preempted, reference_name="whole", exact=True):
    """Resume the preempted run to step 10 and compare it with a run that went there at once.
    exact: bit for bit (one process); else within the tolerance of a different world size."""
    run = run_dir_of(preempted)
    end = records(run, "end")[-1]
    assert end["reason"] == "preempted"
    assert ckpt.latest_checkpoint(run).endswith(ckpt.step_file(end["step"]))  # saved where it stopped
    assert end["step"] == 3  # the step the signal reached the run in (pause:2) is finished, no more
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocess ran (OMP_NUM_THREADS=1): the same float sums
    try:
        train.main(preempted + ["--max_steps=10", "--resume"])
        whole = preemptible_run(tiny_args, reference_name) + ["--max_steps=10"]
        train.main(whole)
    finally:
        torch.set_num_threads(threads)
    a = {r["step"]: r["loss"] for r in records(run_dir_of(whole), "train")}
    b = {r["step"]: r["loss"] for r in records(run, "train")}  # the last record of a step wins
    assert a.keys() == b.keys() == set(range(10))
    assert list(b.values()) == (list(a.values()) if exact else pytest.approx(list(a.values()), rel=1e-5))
    wa = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir_of(whole)))["model"]
    wb = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))["model"]
    assert all(torch.equal(wa[k], wb[k]) if exact else torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_sigterm_saves_and_exits_75_then_resumes_exactly(tiny_args):
    """One process, as `python train.py` under a scheduler: bit-identical after resume."""
    args = preemptible_run(tiny_args, "one")
    env = dict(os.environ, OMP_NUM_THREADS="1", FAULT="pause:2")
    proc = subprocess.Popen(
        [sys.executable, WITH_FAULTS, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = signal_when_paused(proc, signal.SIGTERM)
    out += proc.communicate(timeout=120)[0]
    assert proc.returncode == EXIT_PREEMPTED, out[-3000:]
    assert "received SIGTERM" in out and "preempted: saved" in out
    check_resumes_exactly(tiny_args, args)


def test_sigterm_to_a_two_rank_torchrun_job_then_resume(tiny_args):
    """torchrun passes SIGTERM to both ranks; they agree, finish the step, save once, and a
    resume continues with the same losses (2 ranks equal 1 process, tested elsewhere)."""
    args = preemptible_run(tiny_args, "two")
    env = dict(os.environ, OMP_NUM_THREADS="1", FAULT="pause:2")
    proc = subprocess.Popen(
        torchrun_cmd(args), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out = signal_when_paused(proc, signal.SIGTERM, ranks=2)
    out += proc.communicate(timeout=120)[0]
    assert out.count("received SIGTERM") == 2, out[-3000:]
    assert records(run_dir_of(args), "start")[0]["world_size"] == 2
    check_resumes_exactly(tiny_args, args, reference_name="whole2", exact=False)
