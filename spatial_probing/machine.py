"""What the machine can do fast: facts about the hardware that choose a code path (a base utility)."""

from __future__ import annotations

from pathlib import Path

import torch

GIB = 1024**3


def bf16_supported(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively: a CUDA GPU that supports it, or a
    CPU with AMX-BF16 or AVX512-BF16 (elsewhere bfloat16 GEMMs are emulated and slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:  # private, but the only place torch reports these CPU flags
        flags = torch._C._cpu._get_cpu_capability()
    except AttributeError:
        return False
    return bool(flags.get("amx_bf16") or flags.get("avx512_bf16"))


def peak_rss_gib() -> float:
    """This process's peak resident set size in GiB (VmHWM, Linux).

    Read in the process measured: a child's ru_maxrss would include the parent's RSS at fork time, since
    Linux carries the high-water mark across exec.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GIB
    raise RuntimeError("no VmHWM in /proc/self/status (peak RSS is measured on Linux only)")
