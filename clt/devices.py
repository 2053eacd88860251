"""Device, precision and seeds. Stages choose these; model and loss code take the device from inputs."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from clt.errors import CltError


def pick_device(name: str = "auto") -> torch.device:
    """auto: cuda, then mps, then cpu. An explicit device that is absent is an error, not a fallback."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CltError(f"--device {name}: no CUDA device is available here", "use --device auto or --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CltError("--device mps: no Apple GPU is available here", "use --device auto or --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise CltError(f"--device {name} is not a device", "use auto, cpu, cuda, cuda:N or mps") from None


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def cpu_supports_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX-512 BF16 or AMX). Without them bf16
    matmuls are emulated and run hundreds of times slower than fp32 (0.3 vs 80 GFLOP/s
    measured on an AVX2-only EPYC), so `auto` must not pick bf16 there."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto → bf16 autocast on CPUs with native bf16 kernels, bf16 (or fp16) AMP on CUDA, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_supports_bf16():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; return a CPU generator for index sampling."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
