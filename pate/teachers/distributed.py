"""Scale-out with ``torchrun``: each rank trains a contiguous block of teachers.

Teacher k's randomness comes from ``(seed, k)`` only, so a teacher trained on rank r of W equals
the same teacher trained in a single process; ranks write their own part files and the vote
stage reads every part, whatever the world size. ``torch.distributed`` is imported only here,
and only when ``WORLD_SIZE`` says the process runs under torchrun.
"""
from __future__ import annotations

import os

import torch

from .ensemble import TeacherEnsemble


def rank_and_size() -> tuple[int, int]:
    """(rank, world size) under torchrun, with the process group initialised; (0, 1) otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def barrier(size: int) -> None:
    """Wait for every rank (each rank's files are on disk) and stay in the process group."""
    if size > 1:
        import torch.distributed as dist

        dist.barrier()


def barrier_and_close(size: int) -> None:
    """Wait for every rank (each rank's files are on disk), then leave the process group."""
    if size > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def teachers_for_rank(num_teachers: int, rank: int, world_size: int) -> list[int]:
    """The contiguous block of teacher ids that ``rank`` of ``world_size`` trains (sizes differ by ≤ 1)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}). Found {rank}.")
    base, extra = divmod(num_teachers, world_size)
    start = rank * base + min(rank, extra)
    return list(range(start, start + base + (rank < extra)))


def all_gather_ensemble(ensemble: TeacherEnsemble, num_teachers: int, group=None) -> TeacherEnsemble:
    """With ``torch.distributed`` initialised and every rank holding ``teachers_for_rank``'s block,
    return the full K-teacher ensemble on every rank (CPU tensors, gloo-friendly)."""
    import torch.distributed as dist

    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if list(ensemble.teacher_ids) != teachers_for_rank(num_teachers, rank, world):
        raise ValueError(f"rank {rank} holds teachers {ensemble.teacher_ids[:3]}..., not its block")
    width = len(teachers_for_rank(num_teachers, 0, world))
    full = TeacherEnsemble(teacher_ids=num_teachers, **ensemble.spec())
    with torch.no_grad():
        for name, tensor in ensemble.state_dict().items():
            local = torch.zeros((width, *tensor.shape[1:]), dtype=tensor.dtype)
            local[:tensor.shape[0]] = tensor.cpu()
            gathered = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(gathered, local, group=group)
            blocks = [g[:len(teachers_for_rank(num_teachers, r, world))] for r, g in enumerate(gathered)]
            full.state_dict()[name].copy_(torch.cat(blocks))
    return full
