"""Memory advice before training: will one step fit the device, and if not, which
micro-batch (with `accumulate`) would?

The estimate is static, from the activation memory `dlc compile --emit summary` prints
(every layer's output, f32, per example):

    step bytes = ACT_FACTOR x activations/example x micro-batch      (outputs kept for the
                                                                      backward, their
                                                                      gradients, temporaries)
               + PARAM_FACTOR x parameter bytes                      (weights, gradients,
                                                                      two optimizer slots)

The capacity is the memory available now: on the CPU MemAvailable of /proc/meminfo, on
CUDA the device's free memory (torch.cuda.mem_get_info). DLC_MEMORY_LIMIT (bytes, or with a
KiB/MiB/GiB suffix) overrides it, so that the advice is testable and can be asked for a
smaller budget than the machine's.
"""
from __future__ import annotations

import os
import re
import sys

from ..compiler.emit import activation_bytes
from ..spec.diagnostics import UserError, render_warning

ACT_FACTOR = 3
PARAM_FACTOR = 4
UNITS = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30,
         "gib": 1 << 30}


def per_example_bytes(spec) -> int:
    """The step's bytes for each example of a micro-batch."""
    return ACT_FACTOR * sum(activation_bytes(n) for n in spec.graph.nodes)


def fixed_bytes(spec) -> int:
    """The step's bytes whatever the batch: parameters, their gradients and slots."""
    return PARAM_FACTOR * 4 * spec.num_params()


def step_bytes(spec, micro: int) -> int:
    return fixed_bytes(spec) + micro * per_example_bytes(spec)


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in UNITS:
        raise UserError(f"DLC_MEMORY_LIMIT must be a byte count such as 512MiB, got {text!r}")
    return int(m.group(1)) * UNITS[m.group(2).lower()]


def capacity(device) -> tuple[int | None, str]:
    """(bytes available, where they are), or (None, ...) when unknown."""
    limit = os.environ.get("DLC_MEMORY_LIMIT")
    if limit:
        return parse_bytes(limit), "DLC_MEMORY_LIMIT"
    if str(device).startswith("cuda"):
        import torch
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free, f"free memory of {device}"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM"
    except OSError:
        pass
    return None, "unknown"


def largest_fit(spec, share: int, cap: int) -> int | None:
    """The largest micro-batch dividing `share` (one process's batch) whose step fits
    `cap` bytes; None when not even one example fits."""
    fits = [m for m in range(share, 0, -1) if share % m == 0 and step_bytes(spec, m) <= cap]
    return fits[0] if fits else None


def advice(spec, share: int, accumulate: int, device) -> str | None:
    """The warning to print before training when a step on micro-batches of
    share/accumulate examples would not fit the device; None when it fits."""
    cap, where = capacity(device)
    micro = share // accumulate
    need = step_bytes(spec, micro)
    if cap is None or need <= cap:
        return None
    span = spec.config.spans.get("batch") or spec.config.spans.get("accumulate")
    msg = (f"a training step on {micro} examples needs about {_mib(need)} "
           f"(estimate: {ACT_FACTOR} x {_mib(per_example_bytes(spec) // ACT_FACTOR)} of "
           f"activations per example + {PARAM_FACTOR} x the parameters), more than the "
           f"{_mib(cap)} of {where}")
    best = largest_fit(spec, share, cap)
    if best is None:
        return render_warning(msg, span, hint="not even one example fits: use a smaller "
                              "model or a device with more memory")
    return render_warning(msg, span, hint=f"`accumulate {share // best}` (micro-batches of "
                          f"{best}, the same optimizer steps) fits in about "
                          f"{_mib(step_bytes(spec, best))}")


def warn(spec, share: int, accumulate: int, device, enabled: bool = True) -> str | None:
    """Print the advice on stderr (the leading process of a run); returns it."""
    text = advice(spec, share, accumulate, device)
    if text and enabled:
        sys.stderr.write(text + "\n")
    return text


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"
