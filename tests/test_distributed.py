"""Processes training together (torchrun, gloo on CPU): equal to one process, clean exits,
a hung rank named, a crashed rank restarted, two nodes. Each test launches real processes."""

import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, records, run_dir_of, torchrun, torchrun_cmd

import train
from storage import checkpoint as ckpt

MUON_SHARDS = os.path.join(ROOT, "tests", "muon_on_shards.py")


def common(tiny_args, **overrides):
    values = {**dict(max_steps=4, global_batch_size=8, micro_batch_size=2, dropout=0.1), **overrides}
    return tiny_args + [f"--{k}={v}" for k, v in values.items()]


def same_run(single_dir, other_dir, kinds=(("train", "loss"), ("eval", "val_loss"), ("eval", "train_loss"))):
    for kind, key in kinds:
        a = {r["step"]: r[key] for r in records(single_dir, kind)}
        b = {r["step"]: r[key] for r in records(other_dir, kind)}
        assert len(a) > 1 and a.keys() == b.keys(), (kind, key)
        assert list(b.values()) == pytest.approx(list(a.values()), rel=1e-5, abs=1e-6), (kind, key)
    wa = ckpt.load_checkpoint(ckpt.latest_checkpoint(single_dir))["model"]
    wb = ckpt.load_checkpoint(ckpt.latest_checkpoint(other_dir))["model"]
    worst = max(((without_key_bias(k, wa[k]) - without_key_bias(k, wb[k])).abs().max().item(), k) for k in wa)
    assert worst[0] <= 1e-5, f"weights differ: {worst[1]} by {worst[0]:.2e}"


def without_key_bias(name, weight):
    """The weight, less the attention's key bias. Its gradient is zero in exact arithmetic
    (softmax ignores a shift common to every key), so it trains on rounding noise, which
    AdamW scales up into steps that depend on the summation order: measured 7e-6 to 9e-6
    apart after the 20 steps below, against at most 2e-6 for every other weight."""
    if not name.endswith("attn.c_attn.bias"):
        return weight
    n = weight.numel() // 3  # q, k, v
    return torch.cat([weight[:n], weight[2 * n :]])


def thread_lists(output: str) -> list:
    # the ranks share one stdout: their lines can run together
    return [json.loads(m) for m in re.findall(r"THREADS_AT_EXIT=(\[[^\]]*\])", output)]


def demo_model(tiny_args, **overrides):
    """The demo's model (4 x 128, context 64) on the tiny data, global batch 32, dropout on."""
    values = {
        **dict(
            model="tiny",
            n_layer=4,
            n_head=4,
            n_embd=128,
            block_size=64,
            global_batch_size=32,
            micro_batch_size=8,
            max_steps=20,
            lr_decay_steps=20,
            dropout=0.1,
            eval_interval=10,
            save_interval=10,
        ),
        **overrides,
    }
    return tiny_args + [f"--{k}={v}" for k, v in values.items()]


def test_every_parallelism_trains_the_same_and_leaves_no_gloo_thread(tiny_args):
    """One process with accumulation 4, all logits at once and no checkpointing; DDP over 2
    ranks (with full activation checkpointing), FSDP over 2 ranks and FSDP over one (with
    selective checkpointing), each with the loss in chunks (of 96 positions: five and a short
    one per micro-batch of 512), its gradients reduced across ranks as any other's: the same
    loss at every step (dropout on, its masks replayed in recomputation), the same
    evaluations, the same weights. FSDP stopped and resumed equals FSDP that ran on. And
    when a DDP rank exits no gloo worker thread is left: one alive into interpreter shutdown
    can abort a process whose run succeeded. (fully_shard itself keeps a reference to the
    process group, so under FSDP the threads outlive it; the final barrier leaves them idle.)"""
    single = demo_model(tiny_args, run_name="single", loss_chunk=0)
    train.main(single)
    threads = []
    for name, nproc, parallelism, recompute in (
        ("ddp2", 2, "ddp", "full"),
        ("fsdp2", 2, "fsdp", False),
        ("fsdp1", 1, "fsdp", "selective"),
    ):
        args = demo_model(
            tiny_args,
            run_name=name,
            parallelism=parallelism,
            loss_chunk=96,
            activation_checkpointing=recompute,
        )
        proc = torchrun(args, nproc=nproc)
        assert proc.returncode == 0, proc.stderr[-3000:]
        same_run(run_dir_of(single), run_dir_of(args))
        start = records(run_dir_of(args), "start")[0]
        assert (start["world_size"], start["accumulation"], start["config"]["parallelism"]) == (
            nproc,
            4 // nproc,
            parallelism,
        )
        threads += thread_lists(proc.stdout) if parallelism == "ddp" else []
    assert len(threads) == 2 and not any("gloo" in name for names in threads for name in names), threads
    halves = demo_model(tiny_args, run_name="fsdp2_halves", parallelism="fsdp", loss_chunk=96)
    for part in (["--max_steps=10"], ["--resume"]):
        assert torchrun(halves + part).returncode == 0
    whole = {
        r["step"]: r["loss"] for r in records(run_dir_of(demo_model(tiny_args, run_name="fsdp2")), "train")
    }
    assert {r["step"]: r["loss"] for r in records(run_dir_of(halves), "train")} == whole  # bit for bit


def test_a_llama_shape_trains_the_same_under_ddp_and_fsdp_and_scores_tasks_under_fsdp(tiny_args, tmp_path):
    """A Llama shape (rotary, RMSNorm, SwiGLU, 2 k/v heads, an untied head that FSDP shards
    with the root) as one process, as DDP over 2 ranks with full checkpointing and as FSDP
    over 2 with selective checkpointing and the loss in chunks: the same losses, evaluations,
    weights and multiple-choice accuracies (scored through position_losses, which FSDP
    gathers the root's parameters for)."""
    task = tmp_path / "task.jsonl"
    choices = ["Speak, speak.", "All:\nfamish"]
    task.write_text(
        "".join(
            json.dumps({"context": "First:\n", "choices": choices, "label": i % 2}) + "\n" for i in range(6)
        )
    )
    llama = dict(
        model="llama-tiny",
        n_layer=2,
        n_embd=64,
        n_kv_head=2,
        mlp_hidden=128,
        block_size=32,
        global_batch_size=8,
        micro_batch_size=2,
        eval_batches=2,
        tie_embeddings=False,
        max_steps=8,
        lr_decay_steps=8,
        eval_interval=4,
        save_interval=4,
        eval_tasks=f"toy:{task}",
    )
    single = demo_model(tiny_args, run_name="llama_single", loss_chunk=0, **llama)
    train.main(single)
    for name, parallelism, recompute in (("llama_ddp2", "ddp", "full"), ("llama_fsdp2", "fsdp", "selective")):
        args = demo_model(
            tiny_args,
            run_name=name,
            parallelism=parallelism,
            loss_chunk=24,  # 64 positions per micro-batch: two chunks and a short one
            activation_checkpointing=recompute,
            **llama,
        )
        proc = torchrun(args, nproc=2)
        assert proc.returncode == 0, proc.stderr[-3000:]
        same_run(
            run_dir_of(single),
            run_dir_of(args),
            (("train", "loss"), ("eval", "val_loss"), ("eval", "toy_acc")),
        )
    assert "lm_head.weight" in ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir_of(single)))["model"]


def test_a_run_resumes_under_any_parallelism_and_world_size(tiny_args):
    """DDP on 2 ranks -> FSDP on 2 -> FSDP on 1 -> one plain process, each resuming the last
    one's checkpoint: the losses of a run that never changed."""
    reference = demo_model(tiny_args, run_name="reference", max_steps=8, save_interval=2)
    train.main(reference)
    chain = demo_model(tiny_args, run_name="chain", save_interval=2)
    for max_steps, nproc, parallelism in ((2, 2, "ddp"), (4, 2, "fsdp"), (6, 1, "fsdp")):
        args = chain + [f"--max_steps={max_steps}", f"--parallelism={parallelism}", "--resume=auto"]
        proc = torchrun(args, nproc=nproc)
        assert proc.returncode == 0, proc.stderr[-3000:]
    train.main(chain + ["--max_steps=8", "--parallelism=ddp", "--resume"])
    starts = records(run_dir_of(chain), "start")
    assert [(r["step"], r["world_size"], r["config"]["parallelism"]) for r in starts] == [
        (0, 2, "ddp"),
        (2, 2, "fsdp"),
        (4, 1, "fsdp"),
        (6, 1, "ddp"),
    ]
    same_run(run_dir_of(reference), run_dir_of(chain), kinds=(("train", "loss"),))


def test_a_hung_rank_is_named_and_the_job_ends(tiny_args):
    args = common(tiny_args, run_name="hang", collective_timeout_s=3, max_steps=6)
    proc = torchrun(args, fault="hang:1:2", timeout=120)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "rank 1: hanging at step 2" in out
    assert "rank 1 stopped answering after completing 2 steps" in out, out[-3000:]
    assert "collective_timeout_s=3" in out


def test_torchrun_restarts_a_crashed_run_and_it_resumes_exactly(tiny_args, tmp_path):
    single = common(tiny_args, run_name="single", max_steps=6, save_interval=2)
    train.main(single)
    crash = common(tiny_args, run_name="crash", max_steps=6, save_interval=2, resume="auto")
    marker = tmp_path / "died"
    proc = torchrun(crash, fault=f"die_once:1:3:{marker}", launcher=("--standalone", "--max_restarts=1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert marker.exists() and "rank 1: dying at step 3" in proc.stdout
    assert [r["step"] for r in records(run_dir_of(crash), "start")] == [0, 2]  # restarted from step 2
    same_run(run_dir_of(single), run_dir_of(crash))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_one_machine_match_one_process(tiny_args):
    single = common(tiny_args, run_name="single")
    train.main(single)
    nodes = common(tiny_args, run_name="nodes")
    endpoint = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, OMP_NUM_THREADS="1", FAULT="")
    agents = [
        subprocess.Popen(
            torchrun_cmd(
                nodes,
                nproc=1,
                launcher=(
                    "--nnodes=2",
                    f"--node_rank={i}",
                    "--rdzv_backend=c10d",
                    f"--rdzv_endpoint={endpoint}",
                    "--rdzv_id=two_nodes",
                    f"--rdzv_conf=is_host={int(i == 0)}",
                ),
            ),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in (0, 1)
    ]
    outputs = [a.communicate(timeout=240)[0] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    start = records(run_dir_of(nodes), "start")[0]
    assert start["world_size"] == 2
    same_run(run_dir_of(single), run_dir_of(nodes))


def test_muon_under_ddp_and_fsdp_trains_as_one_process_and_its_checkpoints_move_between_them(tiny_args):
    """--optimizer=muon: DDP over 2 ranks, then FSDP over 2 resuming its checkpoint, then one
    plain process resuming that: the losses and weights of one process that ran throughout.
    Muon orthogonalises in bf16, so equal means within its rounding (DDP's all-reduce alone
    moves the weights by ~3e-3 after 8 steps), not bit for bit. Under FSDP torch.optim.Muon
    sees each matrix as a DTensor and orthogonalises the whole matrix (DTensor's matmuls
    gather what they need): one step on a row-sharded matrix equals the whole matrix's step,
    10x closer than orthogonalising each rank's rows alone would be."""
    single = demo_model(
        tiny_args, run_name="single", optimizer="muon", max_steps=8, save_interval=4, dropout=0.0
    )
    train.main(single)
    chain = demo_model(
        tiny_args, run_name="chain", optimizer="muon", max_steps=8, save_interval=4, dropout=0.0
    )
    for max_steps, nproc, parallelism in ((4, 2, "ddp"), (8, 2, "fsdp")):
        proc = torchrun(
            chain + [f"--max_steps={max_steps}", f"--parallelism={parallelism}", "--resume=auto"], nproc
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    train.main(chain + ["--max_steps=12", "--resume"])  # and on in one process
    a = {r["step"]: r["loss"] for r in records(run_dir_of(single), "train")}
    b = {r["step"]: r["loss"] for r in records(run_dir_of(chain), "train") if r["step"] < 8}
    assert list(b.values()) == pytest.approx(list(a.values()), rel=2e-3) and b.keys() == a.keys()
    wa = ckpt.load_checkpoint(os.path.join(run_dir_of(single), ckpt.step_file(8)))["model"]
    wb = ckpt.load_checkpoint(os.path.join(run_dir_of(chain), ckpt.step_file(8)))["model"]
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 2e-2
    assert records(run_dir_of(chain), "eval")[-1]["step"] == 12
    env = dict(os.environ, OMP_NUM_THREADS="1")
    shards = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", MUON_SHARDS],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    found = re.search(r"MUON_SHARDS whole=(\S+) per_shard=(\S+)", shards.stdout)
    assert found, shards.stderr[-3000:]
    whole, per_shard = map(float, found.groups())
    assert whole < per_shard / 5, (whole, per_shard)
