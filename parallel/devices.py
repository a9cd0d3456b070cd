"""Which device and precision a process uses, and what a GPU can do: one rule for
train.py, sample.py and the planner."""

import contextlib
import re

import torch

from errors import BadInput

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
DTYPES = ("auto", "float32", "bfloat16", "float16")

# Dense (no sparsity) bf16/fp16 tensor-core peak, FLOP/s, from NVIDIA datasheets.
# Lookup is by substring, longest key first, so "H100 PCIe" beats "H100" and "L40S" beats "L4".
PEAK_FLOPS = {
    "A100": 312e12,
    "H100 SXM": 989e12,
    "H100 HBM3": 989e12,  # torch names the SXM part "NVIDIA H100 80GB HBM3"
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,  # same Hopper die as the H100 SXM, more memory
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10G": 125e12,  # the A10 datasheet figure; AWS's variant runs slightly lower clocks
    "V100": 125e12,  # fp16 only: no bf16 on Volta
    "RTX 4090": 165e12,  # fp32 accumulate, as PyTorch matmuls use (330 with fp16 accumulate)
    "RTX 3090": 71e12,  # fp32 accumulate
}


def peak_flops(device_name: str) -> float | None:
    """Peak dense bf16/fp16 FLOP/s of a device named like torch.cuda.get_device_name(),
    or None when unknown (a CPU, or a GPU not in PEAK_FLOPS)."""
    name = device_name.lower()
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key.lower() in name:
            return PEAK_FLOPS[key]
    return None


def check_device_name(name: str):
    """Raise ValueError unless name is one this project can run on."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise BadInput(f"device {name!r} is not supported; use {DEVICE_NAMES}")


def check_dtype_name(name: str):
    if name not in DTYPES:
        raise BadInput(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")


def pick_device(name: str, local_rank: int | None = None) -> torch.device:
    """name is auto | cpu | cuda | cuda:N. Under torchrun (local_rank given) each process
    takes the GPU of its local rank. A bare "cuda" gets an explicit index."""
    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise BadInput(f"--device={name} but CUDA is not available; use --device=cpu")
    index = local_rank if local_rank is not None else (device.index or 0)
    if index >= torch.cuda.device_count():
        raise BadInput(
            f"--device={name}: there is no cuda:{index} ({torch.cuda.device_count()} GPUs); "
            f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    return torch.device("cuda", index)


def configure(device: torch.device):
    """Settings a process applies once for its device: fp32 matmuls on Ampere and later GPUs
    use TF32 tensor cores (10-bit mantissa, fp32 range), as nanoGPT and torchtitan do."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 is fast on this device: GPUs of compute capability 8.0+ (Ampere on).
    Read from the GPU, because is_bf16_supported() also says yes to slow emulated bf16."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def native_fp8(device: torch.device) -> bool:
    """Whether this device has float8 tensor cores: GPUs of compute capability 8.9+ (Ada:
    L4, L40S, RTX 4090; Hopper: H100, H200; and later)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def auto_dtype_name(device_type: str, native_bf16: bool = True) -> str:
    """What dtype="auto" means: bf16 on GPUs with native bf16, fp16 on older GPUs, fp32 on
    CPU."""
    if device_type == "cuda":
        return "bfloat16" if native_bf16 else "float16"
    return "float32"


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype for name on this device, "auto" resolved by auto_dtype_name."""
    check_dtype_name(name)
    return torch_dtype(auto_dtype_name(device.type, native_bf16(device)) if name == "auto" else name)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a resolved dtype name (float32, bfloat16, float16)."""
    return getattr(torch, name)


def dtype_name(dtype: torch.dtype) -> str:
    """torch_dtype's inverse: the name a config and a record use."""
    return str(dtype).removeprefix("torch.")


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for the forward pass; float32 runs without autocast."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
