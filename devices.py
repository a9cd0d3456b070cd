"""Which device and precision a process uses: one rule for train.py and sample.py."""
import contextlib

import torch

DTYPES = ("auto", "float32", "bfloat16", "float16")


def pick_device(name: str, local_rank: int | None = None) -> torch.device:
    """name is auto | cpu | cuda | cuda:N. Under torchrun (local_rank given) each process
    takes the GPU of its local rank. A bare "cuda" gets an explicit index."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise ValueError(f"--device={name} but CUDA is not available; use --device=cpu")
    index = local_rank if local_rank is not None else (device.index or 0)
    return torch.device("cuda", index)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on GPUs with native bf16 (compute capability 8.0+, Ampere on), fp16 on
    older GPUs (is_bf16_supported() also says yes to emulated, slow bf16), fp32 on CPU."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for the forward pass; float32 runs without autocast."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
