"""--fp8's wiring, on the CPU: torchao's float8 training runs there too (its float8 matmul
is a slow reference kernel), so a run can be checked end to end on a CPU that stands in for a
machine with float8 tensor cores. A real CPU refuses --fp8 (tests/test_resolve.py); its
speed and its loss against bf16 are GPU measurements (bench/gpu_suite.py). Skipped without
torchao (the fp8 extra: pip install -e ".[fp8]")."""

import dataclasses
import math
import os

import pytest
import torch
from conftest import records, run_dir_of

import export
import train
from model import GPT, GPTConfig, to_float8
from storage import checkpoint as ckpt
from training.resolve import Machine

pytest.importorskip("torchao.float8")

# The smallest shape with a layer torchao's advice trains in float8 (model.float8_worth_it):
# the MLP's first layer, 16 -> 1,040 (over 1,024 wide); the others stay in the run's dtype.
SHAPE = dict(n_embd=16, n_head=2, mlp_hidden=1040)


@pytest.fixture
def float8_machine(monkeypatch):
    """This CPU, as train.py sees it, has float8 tensor cores."""
    real = Machine.of
    monkeypatch.setattr(
        Machine,
        "of",
        classmethod(lambda cls, device, world: dataclasses.replace(real(device, world), fp8=True)),
    )


def test_to_float8_swaps_the_chosen_layers_and_leaves_the_parameters_as_they_were():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=67, block_size=16, n_layer=2, **SHAPE))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 67, (2, 16))
    plain_loss = model(x, x).item()
    assert to_float8(model) == ["h.0.mlp.c_fc", "h.1.mlp.c_fc"]
    assert type(model.h[0].mlp.c_fc).__name__ == "Float8Linear"
    assert type(model.h[0].mlp.c_proj) is torch.nn.Linear and type(model.h[0].attn.c_attn) is torch.nn.Linear
    after = model.state_dict()
    assert list(after) == list(before)  # the same names, in the same order (optimizer groups, checkpoints)
    assert all(type(after[k]) is torch.Tensor and torch.equal(after[k], before[k]) for k in before)
    loss = model(x, x)
    loss.backward()  # the float8 layers' weights get gradients like any other
    assert model.h[0].mlp.c_fc.weight.grad.abs().sum() > 0
    # float8 rounds the inputs and weights of its matmuls: close to fp32's loss, not equal
    assert loss.item() != plain_loss and loss.item() == pytest.approx(plain_loss, rel=0.02)


def test_a_llama_shape_trains_swiglus_fused_layer_in_float8_and_never_its_untied_head():
    """SwiGLU's [gate; up] layer, 16 -> 2 x 528, is float8's; the untied head, 1,152 x 16 and
    large enough by torchao's advice, stays in the run's dtype (the loss uses its weight
    directly); rotary and grouped-query attention run around the float8 matmuls."""
    torch.manual_seed(0)
    model_cfg = GPTConfig(
        vocab_size=1100,
        block_size=16,
        n_layer=2,
        n_embd=16,
        n_head=2,
        n_kv_head=1,
        mlp_hidden=528,
        bias=False,
        norm="rmsnorm",
        mlp="swiglu",
        rope_theta=10000.0,
        tie_embeddings=False,
    )
    model = GPT(model_cfg)
    x = torch.randint(0, 1100, (2, 16))
    plain_loss = model(x, x).item()
    assert to_float8(model) == ["h.0.mlp.c_fc", "h.1.mlp.c_fc"]
    assert type(model.lm_head) is torch.nn.Linear
    loss = model(x, x)
    loss.backward()
    assert model.h[1].mlp.c_fc.weight.grad.abs().sum() > 0 and model.lm_head.weight.grad.abs().sum() > 0
    assert loss.item() != plain_loss and loss.item() == pytest.approx(plain_loss, rel=0.02)


def fp8_args(tiny_args, name, *extra):
    return (
        tiny_args
        + [f"--{k}={v}" for k, v in SHAPE.items()]
        + ["--max_steps=3", "--dtype=bfloat16", f"--run_name={name}", *extra]
    )


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_an_fp8_run_trains_and_its_checkpoint_and_export_hold_plain_weights(
    tiny_args, tmp_path, float8_machine, parallelism
):
    """train.py converts the model (before FSDP shards it), trains, and says so; the
    checkpoint holds the plain model's state (same names, plain fp32 tensors), which a plain
    GPT loads and export.py exports."""
    fp8 = fp8_args(tiny_args, "fp8", "--fp8", f"--parallelism={parallelism}")
    bf16 = fp8_args(tiny_args, "bf16", f"--parallelism={parallelism}")
    for args in (fp8, bf16):
        train.main(args)
    start = records(run_dir_of(fp8), "start")[0]
    assert start["config"]["fp8"] and start["fp8_layers"] == ["h.0.mlp.c_fc", "h.1.mlp.c_fc"]
    assert records(run_dir_of(bf16), "start")[0]["fp8_layers"] == []
    losses = [r["loss"] for r in records(run_dir_of(fp8), "train")]
    reference = [r["loss"] for r in records(run_dir_of(bf16), "train")]
    assert all(math.isfinite(x) for x in losses) and losses != reference
    assert losses == pytest.approx(reference, rel=0.02)

    saved = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir_of(fp8)))
    plain = GPT(GPTConfig(**saved["model_config"]))
    assert list(saved["model"]) == list(plain.state_dict())
    assert all(type(v) is torch.Tensor and v.dtype == torch.float32 for v in saved["model"].values())
    plain.load_state_dict(saved["model"])  # strict
    out = str(tmp_path / "export")
    export.main([f"--checkpoint={run_dir_of(fp8)}", f"--out={out}"])
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
