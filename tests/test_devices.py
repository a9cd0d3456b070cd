import pytest
import torch

from parallel.devices import autocast, peak_flops, pick_device, pick_dtype


def test_a_cpu_computes_in_float32_by_default_and_autocasts_to_what_is_asked():
    cpu = pick_device("cpu")
    assert cpu == torch.device("cpu")
    assert pick_dtype("auto", cpu) == torch.float32
    assert pick_dtype("bfloat16", cpu) == torch.bfloat16
    with autocast(cpu, torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(cpu, torch.float32):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_unsupported_device_and_dtype_names_are_refused():
    with pytest.raises(ValueError, match="not supported"):
        pick_device("mps")
    with pytest.raises(ValueError, match="not supported"):
        pick_device("cuda:x")
    with pytest.raises(ValueError, match="dtype must be one of"):
        pick_dtype("fp8", torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        pick_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_devices_get_an_index():
    assert pick_device("cuda").index == 0
    assert pick_device("auto", local_rank=0) == torch.device("cuda", 0)
    major = torch.cuda.get_device_capability(0)[0]
    assert pick_dtype("auto", pick_device("cuda")) == (torch.bfloat16 if major >= 8 else torch.float16)


def test_peak_flops_lookup():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert peak_flops("NVIDIA A100 80GB PCIe") == 312e12
    assert peak_flops("NVIDIA L40S") == 362e12  # not L40 (181e12), a shorter name inside it
    assert peak_flops("NVIDIA L4") == 121e12
    assert peak_flops("NVIDIA A10G") == 125e12
    assert peak_flops("Tesla V100-SXM2-16GB") == 125e12
    assert peak_flops("NVIDIA GeForce RTX 4090") == 165e12
    assert peak_flops("cpu") is None
