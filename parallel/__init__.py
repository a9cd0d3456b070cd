"""Processes and devices: which device and precision a process uses, the torchrun process group and its faults, how the model is spread over ranks (DDP, FSDP2), preemption signals."""
