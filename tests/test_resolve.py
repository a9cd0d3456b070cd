"""resolve(): one answer for how a run runs, whoever asks (train.py, the planner, the GPU
suite): the schedule's defaults, dtype, compile and loss chunk from the machine, and the
parallelism from the memory model."""

import dataclasses

import pytest

from model import LOSS_CHUNK
from training.config import ConfigError, TrainConfig
from training.memory import GiB, Way
from training.resolve import Machine, resolve

VOCAB = 50257
CPU = Machine("cpu", 1, native_bf16=False)


def gpu(world=1, gib=80.0, native_bf16=True):
    return Machine("cuda", world, gib * GiB, native_bf16)


def production_8gpu(**kw):
    return TrainConfig(**{**dict(model="1.2b", global_batch_size=256, micro_batch_size=8), **kw})


def resolved(cfg, machine):
    return resolve(cfg, machine, cfg.model_config(VOCAB))


def test_derived_settings_follow_the_machine_and_what_the_config_says_stays():
    cfg = TrainConfig(learning_rate=3e-4, max_steps=500)
    on_gpu = resolved(cfg, gpu()).cfg
    assert on_gpu.min_lr == pytest.approx(3e-5) and on_gpu.lr_decay_steps == 500
    # a GPU compiles, and compiled the fused cross-entropy takes all logits at once
    assert (on_gpu.dtype, on_gpu.compile, on_gpu.loss_chunk) == ("bfloat16", True, 0)
    on_cpu = resolved(cfg, CPU).cfg
    assert (on_cpu.dtype, on_cpu.compile, on_cpu.loss_chunk) == ("float32", False, LOSS_CHUNK)
    assert resolved(cfg, gpu(native_bf16=False)).cfg.dtype == "float16"  # a pre-Ampere GPU
    assert resolved(TrainConfig(compile=False), gpu()).cfg.loss_chunk == LOSS_CHUNK
    kept = resolved(
        TrainConfig(min_lr=0.0, lr_decay_steps=300, dtype="bfloat16", compile=False, loss_chunk=64), gpu()
    ).cfg
    assert (kept.min_lr, kept.lr_decay_steps, kept.dtype, kept.compile, kept.loss_chunk) == (
        0.0,
        300,
        "bfloat16",
        False,
        64,
    )


def test_the_model_config_carries_the_resolved_training_fields_onto_the_given_shape():
    shape = dataclasses.replace(TrainConfig(model="tiny").model_config(100), n_layer=3)  # e.g. a checkpoint's
    r = resolve(TrainConfig(model="tiny", dropout=0.1, activation_checkpointing="selective"), CPU, shape)
    assert (
        r.model_cfg.n_layer,
        r.model_cfg.dropout,
        r.model_cfg.activation_checkpointing,
        r.model_cfg.loss_chunk,
    ) == (3, 0.1, "selective", LOSS_CHUNK)


def test_auto_runs_ddp_when_it_fits_and_fsdp_when_it_does_not():
    r = resolved(production_8gpu(), gpu(8, 80))
    assert r.way == Way("ddp") and r.cfg.parallelism == "ddp" and "fits in 80 GiB" in r.why
    r = resolved(production_8gpu(), gpu(8, 24))
    assert r.way == Way("fsdp") and r.cfg.parallelism == "fsdp" and "over 24 GiB; FSDP needs" in r.why
    assert resolved(production_8gpu(), gpu(1, 24)).way == Way("ddp")  # one process: sharding saves nothing
    assert resolved(production_8gpu(), Machine("cpu", 8, native_bf16=False)).way == Way(
        "ddp"
    )  # no device memory to fit


def test_offload_means_fsdp_and_needs_a_gpu():
    r = resolved(production_8gpu(offload=True), gpu(8, 80))
    assert r.way == Way("fsdp", False, True) and r.cfg.parallelism == "fsdp"
    with pytest.raises(ConfigError, match="drop --offload"):
        resolved(TrainConfig(model="tiny", offload=True), CPU)


def test_a_process_joins_a_group_when_it_has_peers_or_shards():
    assert not resolved(TrainConfig(model="tiny"), CPU).joins_process_group
    assert resolved(TrainConfig(model="tiny"), Machine("cpu", 2, native_bf16=False)).joins_process_group
    assert resolved(TrainConfig(model="tiny", parallelism="fsdp"), CPU).joins_process_group  # a mesh of one
    assert resolved(production_8gpu(offload=True), gpu(1)).joins_process_group


def test_the_answer_is_what_a_run_records():
    answer = resolved(production_8gpu(), gpu(8, 24)).to_dict()
    assert answer["way"] == "FSDP" and answer["joins_process_group"] and "FSDP needs" in answer["why"]
    assert answer["machine"]["world_size"] == 8 and answer["machine"]["memory_gib"] == 24
    assert (
        resolved(TrainConfig(model="tiny"), CPU).to_dict()["machine"]["memory_gib"] is None
    )  # JSON has no inf


def test_fp8_needs_float8_tensor_cores_and_torchao_and_runs_bf16_around_them():
    """--fp8 is refused in one line, naming the fix, where it cannot run: a CPU, a GPU older
    than compute capability 8.9, a machine without torchao. Where it runs, dtype=auto means
    bf16 (autocast around the float8 matmuls); the planner plans for cards that have it."""
    cfg = TrainConfig(model="tiny", fp8=True)
    with pytest.raises(
        ConfigError, match=r"^--fp8 needs float8 tensor cores .*; a CPU has none: drop --fp8$"
    ):
        resolved(cfg, CPU)
    with pytest.raises(ConfigError, match=r"this GPU has none \(compute capability < 8.9\): drop --fp8$"):
        resolved(cfg, gpu())  # an A100: bf16, no float8
    with pytest.raises(
        ConfigError, match=r"not installed: pip install torchao \(the release made for your torch"
    ):
        resolved(cfg, Machine("cuda", 1, 80 * GiB, fp8=True, torchao=False))
    r = resolved(cfg, Machine("cuda", 1, 80 * GiB, fp8=True))
    assert (r.cfg.fp8, r.cfg.dtype, r.cfg.compile) == (True, "bfloat16", True)
    assert r.to_dict()["machine"]["fp8"]
    assert Machine.planned("cuda", 8, 80).fp8 and not Machine.planned("cpu", 8, 80).fp8
    with pytest.raises(ConfigError, match=r"use --dtype=bfloat16 \(or auto\)"):
        TrainConfig(fp8=True, dtype="float16")
