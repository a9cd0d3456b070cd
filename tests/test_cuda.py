"""The CUDA paths, on a GPU: bf16 and fp16 autocast, the GradScaler, torch.compile, fused
AdamW, flash attention, pinned host copies, the KV cache, GPU checkpoints on a CPU, FSDP
with offload on one GPU, selective checkpointing's memory, float8 matmuls, NCCL. Every test
is marked `cuda` and skipped without a GPU; `python bench/gpu_suite.py` runs them first
(`pytest -m cuda tests`)."""

import dataclasses
import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, records, run_dir_of, torchrun
from test_sample import prompt, tiny_model

import sample
import train
from model import GPT, CausalSelfAttention, GPTConfig, to_float8
from parallel.devices import autocast, peak_flops
from parallel.distributed import Dist
from storage import checkpoint as ckpt
from storage.weights import build_model, load_weights
from text.loader import read_meta
from training.config import load_config
from training.memory import selective_block_bytes
from training.step_stats import HostCopies, StepValues

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
# bf16 tensor cores and flash attention need compute capability 8.0 (Ampere) or later
native_bf16 = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8,
    reason="needs a GPU with native bf16 (compute capability 8.0+)",
)
CUDA = torch.device("cuda", 0)


@pytest.fixture(autouse=True)
def restore_tf32():
    """train.main turns TF32 on for the whole process (devices.configure); give each test the
    flags it started with, so an fp32 comparison is not run in TF32 by an earlier test."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def on_gpu(tiny_args, **overrides):
    """tiny_args on the GPU in bf16; no compile unless asked (each compile costs 10-30 s)."""
    values = {"device": "cuda", "dtype": "bfloat16", "compile": False, **overrides}
    return tiny_args + [f"--{k}={v}" for k, v in values.items()]


def losses(args):
    return [r["loss"] for r in records(run_dir_of(args), "train")]


def small_model(seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=96, block_size=32, n_layer=2, n_head=2, n_embd=64)).to(CUDA)
    return model, torch.optim.AdamW(model.optimizer_groups(0.1), lr=1e-3, fused=True)


# ---- precision -------------------------------------------------------------------------------


@native_bf16
def test_a_bf16_step_computes_in_bf16_and_updates_fp32_weights():
    model, opt = small_model()
    seen = []
    model.h[0].mlp.c_fc.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    x, y = torch.randint(0, 96, (2, 4, 32), device=CUDA)
    before = [p.detach().clone() for p in model.parameters()]
    loss, norm, applied = train.train_step(
        model,
        [opt],
        torch.amp.GradScaler("cuda", enabled=False),
        [(x, y, 1)],
        1.0,
        autocast(CUDA, torch.bfloat16),
        Dist(device=CUDA),
    ).tolist()
    assert seen == [torch.bfloat16]
    assert (
        loss == pytest.approx(math.log(96), abs=0.1) and math.isfinite(norm) and applied == 1.0
    )  # the init's loss
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the master weights stay fp32
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


@native_bf16
def test_a_bf16_run_trains_and_logs_gpu_memory_and_mfu(tiny_args):
    args = on_gpu(tiny_args)
    torch.cuda.reset_peak_memory_stats()
    assert train.main(args) == 0
    run = run_dir_of(args)
    start, recs = records(run, "start")[0], records(run, "train")
    assert (start["device"], start["dtype"]) == ("cuda:0", "bfloat16")
    assert all(math.isfinite(r["loss"]) for r in recs) and recs[-1]["loss"] < recs[0]["loss"]
    # the GPU's allocated peak (a process with torch loaded has more than that in RSS alone)
    assert 0 < recs[-1]["peak_mem_gib"] <= torch.cuda.max_memory_allocated() / 2**30
    assert all((r["mfu"] is not None) == (peak_flops(torch.cuda.get_device_name()) is not None) for r in recs)


def test_an_fp16_overflow_skips_the_update_and_halves_the_scale():
    model, opt = small_model()
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    x = torch.randint(0, 96, (4, 32), device=CUDA)

    def step(seed):
        return train.train_step(
            model, [opt], scaler, [(x, x, seed)], 1.0, autocast(CUDA, torch.float16), Dist(device=CUDA)
        ).tolist()

    assert step(1)[2] == 1.0  # a scale of 1,024 fits fp16: applied
    weights = [p.detach().clone() for p in model.parameters()]
    state = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()}
    scaler.update(new_scale=2.0**40)  # the loss x 2^40 overflows fp16 (max 65,504) in backward
    loss, norm, applied = step(2)
    assert math.isfinite(loss) and not math.isfinite(norm) and applied == 0.0
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert all(torch.equal(state[id(p)][k], v) for p in model.parameters() for k, v in opt.state[p].items())
    assert scaler.get_scale() == 2.0**39


def test_an_fp16_run_counts_and_logs_its_overflowed_steps_then_trains(tiny_args, monkeypatch):
    """As tests/test_train.py::test_fp16_grad_scaler_skips_steps_on_inf does on the CPU: a
    huge initial scale overflows, each overflow is skipped, counted, logged and halves the
    scale, until the scale fits and steps are applied."""
    real = torch.amp.GradScaler
    monkeypatch.setattr(
        train.torch.amp,
        "GradScaler",
        lambda device, enabled: real(device, init_scale=2.0**40, enabled=enabled),
    )
    args = on_gpu(tiny_args, dtype="float16", max_steps=40, eval_interval=40, save_interval=40)
    assert train.main(args) == 0
    run = run_dir_of(args)
    recs, skipped = records(run, "train"), records(run, "skipped")
    assert recs[-1]["skipped_steps"] == len(skipped) >= 1 and skipped[0]["step"] == 0
    assert recs[-1]["loss_scale"] == 2.0 ** (40 - len(skipped))  # halved once per skipped step
    assert sum(r["applied"] for r in recs) >= 5  # (on a CPU: 23 skipped, then 17 applied)
    saved = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
    assert saved["scaler"]["scale"] == recs[-1]["loss_scale"]


# ---- compile, optimizer, attention, host copies -----------------------------------------------


@native_bf16
def test_compiled_losses_equal_eager_over_20_steps(tiny_args):
    """bf16 keeps 8 significant bits: a rounding moves a value by up to 0.4%. Inductor fuses
    pointwise ops and keeps their intermediates in fp32 where eager rounds each to bf16, so
    the two runs differ by a few roundings per op, and through the weights the differences
    carry over from step to step. 2% is about five roundings; a compile bug (a lost bias, a
    wrong mask, a missed scale) moves a loss of ~3 by far more. (On a CPU this run's loss
    falls from 3.53 to 3.01 over the 20 steps.)"""
    common = on_gpu(tiny_args, max_steps=20, eval_interval=20, save_interval=20)
    eager, compiled = common + ["--run_name=eager"], common + ["--run_name=compiled", "--compile=True"]
    train.main(eager)
    train.main(compiled)
    assert records(run_dir_of(compiled), "start")[0]["config"]["compile"] is True
    a, b = losses(eager), losses(compiled)
    assert len(a) == len(b) == 20 and a[-1] < a[0] - 0.2  # the losses move, so matching them means something
    assert b == pytest.approx(a, rel=0.02)


def test_train_builds_fused_adamw_and_its_step_runs_the_fused_kernel(tiny_args):
    cfg = load_config(on_gpu(tiny_args, dtype="float32"))
    env = Dist(device=CUDA)
    run = train.build(train.prepare(cfg, {cfg.data_dir: read_meta(cfg.data_dir)}, env), env)  # rank 0 of 1
    try:
        (adamw,) = run.optimizers
        assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["fused"] is True
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            train.train_step(
                run.model,
                run.optimizers,
                run.scaler,
                train.micro_batches(run, 0),
                cfg.grad_clip,
                run.autocast,
                env,
            )
            torch.cuda.synchronize()
    finally:
        run.reporter.close()
    ops = {e.name for e in prof.events()}
    assert "aten::_fused_adamw_" in ops, sorted(op for op in ops if "adam" in op.lower())


# SDPA's fused backends: none keeps the T x T scores (the planner counts none). Which one
# PyTorch picks depends on the card and version: cuDNN's on an H200 with torch 2.11.
FUSED_ATTENTION = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_efficient_attention": "mem_efficient",
}


@native_bf16
def test_attention_takes_a_fused_kernel_never_the_math_path():
    from torch.autograd import DeviceType
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    attn = CausalSelfAttention(GPTConfig(vocab_size=64, block_size=256, n_layer=1, n_head=4, n_embd=256)).to(
        CUDA
    )
    x = torch.randn(2, 256, 256, device=CUDA)
    with autocast(CUDA, torch.bfloat16):  # as training runs it: fp32 weights, bf16 q, k, v
        with sdpa_kernel(SDPBackend.MATH):
            want = attn(x)
        with sdpa_kernel(
            SDPBackend.FLASH_ATTENTION
        ):  # with only flash allowed, PyTorch raises if it cannot run
            got = attn(x)
        torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        ) as prof:
            attn(x).float().sum().backward()  # the default choice, forward and backward
            torch.cuda.synchronize()
    events = prof.events()
    ops = {e.name for e in events if e.device_type == DeviceType.CPU and "scaled_dot_product" in e.name}
    kernels = sorted({e.name for e in events if e.device_type == DeviceType.CUDA})
    picked = [FUSED_ATTENTION[op] for op in ops if op in FUSED_ATTENTION]
    print(f"SDPA picked {picked} on {torch.cuda.get_device_name()}; kernels: {kernels}")
    assert len(picked) == 1, ops  # the backend SDPA picked: one fused one
    assert not any("math" in op for op in ops), ops
    assert not any("softmax" in k.lower() for k in kernels), kernels  # no scores were materialized


def test_step_results_reach_the_host_through_pinned_memory_once_the_gpu_has_them():
    copies = HostCopies(CUDA)
    x = torch.randn(4096, 4096, device=CUDA)
    for step in range(3):
        y = (x @ x).norm()  # still computing when push() queues its copy
        copies.push(step, 0.1, StepValues(loss=y, grad_norm=2 * y, applied=torch.ones((), device=CUDA)))
    assert all(values.is_pinned() for _, _, values, _ in copies.pending)
    early = copies.pop(wait_for_all=False)
    assert [r.step for r in early] == [0, 1]  # the newest waits for the next step
    last = copies.pop(wait_for_all=True)
    want = (x @ x).norm().item()
    assert [r.step for r in last] == [2] and all(r.applied for r in early + last)
    assert all(
        r.loss == pytest.approx(want, rel=1e-3) and r.grad_norm == pytest.approx(2 * want, rel=1e-3)
        for r in early + last
    )


# ---- sampling and checkpoints -------------------------------------------------------------------


def test_greedy_sampling_with_the_kv_cache_on_cuda_equals_without():
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 as the CPU test has it: equal greedy picks
    model, idx = tiny_model().to(CUDA), prompt().to(CUDA)
    new = model.config.block_size - idx.size(1) + 1  # the last step conditions on a full block
    cached = sample.generate(model, idx, new, temperature=0.0, use_cache=True)
    plain = sample.generate(model, idx, new, temperature=0.0, use_cache=False)
    assert torch.equal(cached, plain)
    assert len(set(cached[:, idx.size(1) :].flatten().tolist())) > 3  # not one repeated token
    if torch.cuda.get_device_capability()[0] >= 8:  # and the bf16 cache (sample.py's default on a GPU) runs
        with autocast(CUDA, torch.bfloat16):
            bf16 = sample.generate(model, idx, new, temperature=0.0, use_cache=True)
        assert bf16.shape == cached.shape and torch.equal(bf16[:, : idx.size(1)], idx)


@native_bf16
def test_a_llama_shape_trains_compiled_in_bf16_and_its_gpu_cache_generates_as_without(tiny_args):
    """Rotary, RMSNorm, SwiGLU and grouped-query attention through flash attention and
    torch.compile in bf16, selective checkpointing and an untied head: a finite, falling
    loss; then the KV cache on the GPU (fp32) generates what no cache does."""
    llama = ["--model=llama-tiny", "--n_kv_head=1", "--mlp_hidden=64", "--tie_embeddings=False"]
    args = on_gpu(tiny_args + llama, compile=True, activation_checkpointing="selective", max_steps=12)
    assert train.main(args) == 0
    run_losses = losses(args)
    assert all(math.isfinite(x) for x in run_losses) and run_losses[-1] < run_losses[0]
    torch.backends.cuda.matmul.allow_tf32 = False
    model, idx = tiny_model(norm="rmsnorm", mlp="swiglu", rope_theta=1e4, n_kv_head=1), prompt()
    model, idx = model.to(CUDA), idx.to(CUDA)
    new = model.config.block_size - idx.size(1) + 1
    cached = sample.generate(model, idx, new, temperature=0.0, use_cache=True)
    assert torch.equal(cached, sample.generate(model, idx, new, temperature=0.0, use_cache=False))


def test_a_checkpoint_saved_on_the_gpu_samples_on_a_machine_without_one(tiny_args):
    args = on_gpu(tiny_args, compile=True)  # a GPU run's defaults: compiled, bf16
    assert train.main(args) == 0
    path = ckpt.latest_checkpoint(run_dir_of(args))
    cmd = [
        "--checkpoint=" + path,
        "--prompt=First Citizen:",
        "--temperature=0",
        "--max_new_tokens=30",
        "--num_samples=1",
        "--dtype=float32",
    ]
    cpu = subprocess.run(
        [sys.executable, "sample.py", *cmd],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
    )  # no GPU in that process
    assert cpu.returncode == 0, cpu.stderr[-2000:]
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on both: the same greedy text
    gpu = sample.main([*cmd, "--device=cuda"])
    assert cpu.stdout == gpu[0] + "\n" and len(gpu[0]) > len("First Citizen:")


# ---- FSDP on one GPU, NCCL ---------------------------------------------------------------------


def test_fsdp_with_offload_on_one_gpu_trains_and_its_checkpoint_loads_on_the_cpu(tiny_args):
    args = on_gpu(tiny_args, parallelism="fsdp", offload=True, run_name="offload")
    assert train.main(args) == 0
    run = run_dir_of(args)
    config = records(run, "start")[0]["config"]
    assert (config["parallelism"], config["offload"]) == ("fsdp", True)
    got = losses(args)
    assert all(math.isfinite(v) for v in got) and got[-1] < got[0]
    model = build_model(load_weights(ckpt.latest_checkpoint(run)), "cpu")
    x = torch.randint(0, model.config.vocab_size, (2, model.config.block_size))
    with torch.no_grad():
        assert math.isfinite(model(x, x).item())


def test_fsdp_with_offload_trains_as_one_plain_gpu_does(tiny_args):
    """In fp32 the only differences are AdamW on the CPU instead of the GPU and FSDP's
    bookkeeping: the losses and weights agree to float rounding."""
    plain = on_gpu(tiny_args, dtype="float32", run_name="plain")
    offload = on_gpu(tiny_args, dtype="float32", parallelism="fsdp", offload=True, run_name="offload32")
    train.main(plain)
    train.main(offload)
    assert losses(offload) == pytest.approx(losses(plain), rel=1e-3)
    wa = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir_of(plain)))["model"]
    wb = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir_of(offload)))["model"]
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


# ---- what trades compute for memory, and float8 --------------------------------------------


@native_bf16
def test_selective_checkpointing_keeps_the_matmul_outputs_the_planner_counts_and_the_same_gradients():
    """bf16 on the GPU, where attention is a fused kernel: after forward, selective
    checkpointing holds, beyond full checkpointing, the matmuls' and attention's outputs that
    memory.selective_block_bytes counts (within 5%), and its gradients are no checkpointing's."""
    model_cfg = GPTConfig(vocab_size=96, block_size=512, n_layer=4, n_head=8, n_embd=512)
    x, y = torch.randint(0, 96, (2, 4, 512), device=CUDA)
    kept, grads = {}, {}
    for how in (False, "selective", "full"):
        torch.manual_seed(0)
        model = GPT(dataclasses.replace(model_cfg, activation_checkpointing=how)).to(CUDA)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        with autocast(CUDA, torch.bfloat16):  # autocast's cached weight copies go when it exits
            loss = model(x, y)
        kept[how] = torch.cuda.memory_allocated() - before
        loss.backward()
        grads[how] = {n: p.grad for n, p in model.named_parameters()}
        del model, loss
    expected = model_cfg.n_layer * selective_block_bytes(model_cfg, 4, 512, 2)
    assert kept["selective"] - kept["full"] == pytest.approx(expected, rel=0.05)
    assert kept[False] > kept["selective"]
    for name, want in grads[False].items():
        assert (grads["selective"][name] - want).abs().max() <= 1e-2 * want.abs().max(), name


fp8_gpu = pytest.mark.skipif(
    not torch.cuda.is_available()
    or torch.cuda.get_device_capability() < (8, 9)
    or importlib.util.find_spec("torchao") is None,
    reason="needs float8 tensor cores (compute capability 8.9+) and torchao",
)


@fp8_gpu
def test_fp8_runs_float8_matmuls_on_the_gpu_and_tracks_bf16():
    """model.to_float8 on the GPU: the converted layers' matmuls run as float8 scaled matmuls
    (profiler), and the loss and gradients stay close to bf16's (within 3% of the largest)."""
    model_cfg = GPTConfig(
        vocab_size=96, block_size=256, n_layer=2, n_head=6, n_embd=384
    )  # c_attn, c_fc: float8
    x, y = torch.randint(0, 96, (2, 8, 256), device=CUDA)
    results = []
    for fp8 in (False, True):
        torch.manual_seed(0)
        model = GPT(model_cfg).to(CUDA)
        if fp8:
            assert len(to_float8(model)) == 4
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            with autocast(CUDA, torch.bfloat16):
                loss = model(x, y)
            loss.backward()
        ops = {e.key for e in prof.key_averages()}
        assert ("aten::_scaled_mm" in ops) == fp8
        results.append((loss.item(), {n: p.grad for n, p in model.named_parameters()}))
    (bf16_loss, bf16), (fp8_loss, fp8_grads) = results
    assert fp8_loss == pytest.approx(bf16_loss, rel=0.01)
    for name, want in bf16.items():
        assert (fp8_grads[name] - want).abs().max() <= 0.03 * want.abs().max(), name


@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="NCCL needs 2 GPUs: two ranks cannot share one device"
)
def test_two_gpus_over_nccl_train_as_one_process_does(tiny_args):
    common = on_gpu(tiny_args, dtype="float32", global_batch_size=8, micro_batch_size=2, max_steps=4)
    single, ddp = common + ["--run_name=single"], common + ["--run_name=nccl2"]
    train.main(single)
    proc = torchrun(ddp, nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = records(run_dir_of(ddp), "start")[0]
    assert (start["world_size"], start["accumulation"], start["device"]) == (2, 2, "cuda:0")
    assert losses(ddp) == pytest.approx(losses(single), rel=1e-3)
