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


def auto_precision(accelerator: str = "auto") -> tuple[str, str]:
    """What ``--trainer.precision auto`` trains in on ``accelerator`` (``cpu``, ``gpu``/``cuda``, ``auto``: CUDA when
    available, or an accelerator's class path), and why: the precision ``benchmarks/grounding_speed.py`` measured
    faster for that hardware class (docs/grounding.md, "Precision on CPUs").

    bf16-mixed on a CUDA GPU with bfloat16 support; 32-true on every CPU, AMX ones included (there bf16-mixed
    trained the grounding arms at 0.93x float32, and oneDNN's bfloat16 convolution backward spin-waits, so a busy
    core slows it 2-20x), on a GPU without bfloat16 and on any other accelerator."""
    kind = str(accelerator).rsplit(".", 1)[-1].lower().removesuffix("accelerator")
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind in ("gpu", "cuda") and torch.cuda.is_available():
        if bf16_supported("cuda"):
            return "bf16-mixed", "a CUDA GPU with bfloat16 support"
        return "32-true", "a CUDA GPU without bfloat16 support"
    if kind == "cpu" and bf16_supported("cpu"):
        return "32-true", ("a CPU with AMX/AVX512-BF16, where bf16-mixed trained the grounding arms at 0.93x float32 "
                           "(the MiniLM transfer arms at 1.12x) and its convolution backward stalls while another "
                           "process holds a core; docs/grounding.md")
    if kind == "cpu":
        return "32-true", ("a CPU without bfloat16 instructions, where bf16 autocast runs emulated kernels, "
                           "several times slower than float32")
    return "32-true", f"no bf16 measurement for accelerator {accelerator}"


def peak_rss_gib() -> float:
    """This process's peak resident set size in GiB (VmHWM, Linux).

    Read in the process measured: a child's ru_maxrss would include the parent's RSS at fork time, since
    Linux carries the high-water mark across exec.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GIB
    raise RuntimeError("no VmHWM in /proc/self/status (peak RSS is measured on Linux only)")
