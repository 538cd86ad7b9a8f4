"""Data-parallel fine-tuning on one machine: the calling process is rank 0 and spawns ranks 1..N-1, which join
one ``torch.distributed`` process group (gloo on CPU, NCCL when every rank has a GPU of its own).

Only rank 0 writes (checkpoints, history, the run folder); the others train on their share of the batches
and follow rank 0's decisions, which are the same everywhere because every rank validates the same weights.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kenner.errors import KennerError

JOIN_TIMEOUT_S = 60.0


def backend_for(device: str, world: int) -> str:
    """``nccl`` when ``device`` is CUDA with a GPU for every rank, else ``gloo``."""
    return "nccl" if device.startswith("cuda") and torch.cuda.device_count() >= world else "gloo"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _join(rank: int, world: int, port: int, backend: str) -> None:
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(minutes=30),
    )


def _helper(rank: int, world: int, port: int, backend: str, work: Callable[..., Any], args: tuple) -> None:
    """What a spawned rank runs: join the group, do ``work(*args, rank=rank, world=world)``, leave."""
    _join(rank, world, port, backend)
    try:
        work(*args, rank=rank, world=world)
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(world: int, backend: str, work: Callable[..., Any], args: tuple) -> Iterator[None]:
    """Spawn ranks 1..``world``-1 running ``work(*args, rank=r, world=world)`` and join them as rank 0 for the
    block; a rank that fails (or rank 0 failing) stops them all, with one error."""
    port = _free_port()
    context = mp.get_context("spawn")
    # not daemonic: a rank starts DataLoader workers of its own (stopped below if rank 0 fails)
    helpers = [
        context.Process(target=_helper, args=(rank, world, port, backend, work, args)) for rank in range(1, world)
    ]
    for helper in helpers:
        helper.start()
    _join(0, world, port, backend)
    failed = True
    try:
        yield
        failed = False
    finally:
        dist.destroy_process_group()
        for helper in helpers:
            helper.join(timeout=None if not failed else 5.0)
            if helper.is_alive():
                helper.terminate()
                helper.join()
    codes = [helper.exitcode for helper in helpers]
    if any(code != 0 for code in codes):
        raise KennerError(f"a fine-tuning process failed (exit codes of ranks 1..{world - 1}: {codes})")


def barrier(world: int) -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if world > 1:
        dist.barrier()
