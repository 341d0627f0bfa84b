"""Collective helpers for evaluation under DDP: gather Python objects, merge per-rank outputs."""

from __future__ import annotations

import itertools
from typing import Any

import torch


def gather_objects(obj: Any) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` across the process group (``[obj]`` when not distributed)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def merge_rank_outputs(per_rank: list[list[tuple[str, Any]]]) -> dict[str, Any]:
    """Merge per-rank ``(id, value)`` lists into one dict in dataset order, first occurrence wins.

    Lightning's evaluation sampler deals example i to rank i % world_size in order, so reading the
    ranks round-robin restores the dataset order; the duplicates that pad the last shard are dropped.
    """
    merged: dict[str, str] = {}
    for row in itertools.zip_longest(*per_rank):
        for pair in row:
            if pair is not None and pair[0] not in merged:
                merged[pair[0]] = pair[1]
    return merged
