# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""The few distributed-run helpers the handlers share: which process this is, and gathering per-image rows from
every rank in the dataset order.

Read from :mod:`torch.distributed` itself rather than :mod:`ignite.distributed`, which re-synchronises with a process
group created outside it (``torchrun`` + ``init_process_group``) on every ``get_rank()`` call, itself a collective
operation that would have to run on every rank alike.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["gather_per_rank", "interleave_ranks", "is_main_process", "rank_and_world_size"]


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group, ``(0, 1)`` outside a distributed run."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True outside a distributed run and on its rank 0, the one process that writes files and prints tables."""
    return rank_and_world_size()[0] == 0


def gather_per_rank(items: Sequence[Any]) -> list[list[Any]]:
    """The ``items`` (picklable objects) of every rank of a distributed run, one list per rank; ``[list(items)]``
    outside one.

    A collective operation (:func:`torch.distributed.all_gather_object`; on NCCL through the current CUDA device, set
    by the bundles' ``initialize``): in a distributed run every rank must call it the same number of times, in the
    same order.
    """
    world_size = rank_and_world_size()[1]
    if world_size <= 1:
        return [list(items)]
    per_rank: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(per_rank, list(items))
    return [list(part) for part in per_rank]


def interleave_ranks(per_rank: Sequence[Sequence[Any]]) -> list[Any]:
    """Merge per-rank lists in the order of a non-shuffled :class:`~monai.data.DistributedSampler`, which gives rank
    ``r`` the dataset items ``r, r + world_size, ...``: rank 0's first item, rank 1's first, ..., rank 0's second,
    and so on. With ``even_divisible=False`` this is the dataset order, each item once."""
    missing = object()
    return [x for group in itertools.zip_longest(*per_rank, fillvalue=missing) for x in group if x is not missing]
