"""Data-parallel runs: the process group a training process belongs to, and the launcher.

`dlc train SPEC --nproc N` starts N copies of the same command on this machine
(`launch`), each with the variables torchrun sets:

    MASTER_ADDR=127.0.0.1  MASTER_PORT=<a free port>  WORLD_SIZE=N  RANK=r  LOCAL_RANK=r

so a run under `torchrun --nnodes M --nproc-per-node N -m dlc train SPEC` (several
machines) is the same code. A process that finds WORLD_SIZE > 1 joins the group (`join`):
gloo on the CPU, NCCL on CUDA (one GPU per local rank), with a timeout on every collective
(DLC_DIST_TIMEOUT seconds, default 600) so a lost peer ends the run instead of hanging it.
On the CPU each process uses cores / (processes on this machine) threads: N processes
with every core each over-subscribe the machine and run many times slower.

The train graph averages gradients across the group (the `all_reduce` op, inserted by the
compiler's all-reduce pass); `World` is what the loop needs beyond that: which process
leads (rank 0 alone writes the run directory), summed metrics and a shared decision.

The launcher watches its processes: when one exits with an error or is killed, it stops
the others at once (SIGTERM, then SIGKILL) and exits with that process's code (2 for a
user error, 1 otherwise), naming the process.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta

from ..spec.diagnostics import UserError

ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run (rank 0 of 1 when alone)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def sum_(self, t):
        """`t` summed over every process, in place."""
        if self.size > 1:
            import torch.distributed as dist
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist
            dist.barrier()

    def agree(self, flag: bool, device) -> bool:
        """The leader's `flag`, on every process (a decision only the leader can make)."""
        if self.size == 1:
            return flag
        import torch
        import torch.distributed as dist
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.broadcast(t, src=0)
        return bool(t.item())


def env_world() -> int:
    """WORLD_SIZE from the environment (set by `launch` or torchrun), 1 when unset."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"WORLD_SIZE must be a whole number, got {raw!r}") from None


def timeout_seconds() -> float:
    return float(os.environ.get("DLC_DIST_TIMEOUT", "600"))


def join(device: str | None) -> tuple[World, str | None]:
    """Join the process group the environment describes; (world, this process's device).

    On CUDA each local rank takes its own GPU; on the CPU the group talks over gloo."""
    size = env_world()
    if size == 1:
        return World(), device
    missing = [k for k in ENV_KEYS if k not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE={size} but {', '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} not set",
                        hint="start data-parallel runs with `dlc train --nproc N` or torchrun")
    import torch
    import torch.distributed as dist
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if cuda:
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    else:
        device = "cpu"
        torch.set_num_threads(threads_per_process())
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=size,
                                timeout=timedelta(seconds=timeout_seconds()))
    return World(rank, size, local), device


def threads_per_process() -> int:
    """This machine's cores shared among its processes of the run (LOCAL_WORLD_SIZE);
    DLC_THREADS_PER_PROCESS sets it (benchmarks/dp_scaling.py measures the difference)."""
    if os.environ.get("DLC_THREADS_PER_PROCESS"):
        return max(1, int(os.environ["DLC_THREADS_PER_PROCESS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return max(1, (cores or 1) // max(1, local))


# what gloo and NCCL say when a peer of a collective is gone or silent
_PEER_SIGNS = ("connection closed by peer", "connection reset", "broken pipe", "timed out",
               "timeout", "gloo", "nccl")


def peer_failure(e: BaseException) -> str | None:
    """The message for a collective that failed because another process of the run ended
    (or stopped answering), or None for any other error."""
    if os.environ.get("WORLD_SIZE", "1") in ("", "0", "1"):
        return None
    import torch.distributed as dist
    dist_error = getattr(dist, "DistError", ())
    text = str(e).lower()
    if not (isinstance(e, dist_error) or
            isinstance(e, RuntimeError) and any(s in text for s in _PEER_SIGNS)):
        return None
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return (f"dlc: process {os.environ.get('RANK', '?')} of {os.environ['WORLD_SIZE']} lost "
            f"another process of the run ({first}); the launcher names the one that failed\n")


def leave() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# -- the local launcher (`--nproc N`) ------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_env(rank: int, nproc: int, port: int) -> dict:
    env = dict(os.environ)
    env.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nproc),
                "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(nproc)})
    return env


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _stop(procs: list[subprocess.Popen], grace: float = 3.0) -> None:
    """End every process still running: SIGTERM, then SIGKILL after `grace` seconds."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(argv: list[str], nproc: int, poll_s: float = 0.1) -> int:
    """Run `python -m dlc ARGV` as `nproc` processes of one group on this machine; the exit
    code of the run (0, or that of the first process to fail)."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "dlc", *argv],
                              env=_worker_env(rank, nproc, port)) for rank in range(nproc)]
    sys.stderr.write(f"dlc: {nproc} processes on 127.0.0.1:{port} "
                     f"(pids {', '.join(str(p.pid) for p in procs)})\n")
    sys.stderr.flush()
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:                   # a killed process first: its peers fail after it
                rank, code = min(failed, key=lambda rc: (rc[1] >= 0, rc[0]))
                _stop(procs)
                sys.stderr.write(f"dlc: process {rank} of {nproc} {_describe_exit(code)}; "
                                 "stopped the others\n")
                return code if code in (1, 2, 130) else 1
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll_s)
    except KeyboardInterrupt:
        _stop(procs, grace=10.0)        # each process got the interrupt and writes final.json
        return 130
