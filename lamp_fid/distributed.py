"""Collective helpers for evaluation under DDP: gather Python objects, merge per-rank outputs."""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import torch


def gather_objects(obj: Any) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` across the process group (``[obj]`` when not distributed)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def merge_rank_outputs(per_rank: list[list[tuple[str, Any]]], order: Sequence[str] | None = None
                       ) -> dict[str, Any]:
    """Merge per-rank ``(id, value)`` lists into one dict in dataset order, first occurrence wins.

    Lightning's evaluation sampler deals example i to rank i % world_size in order, so reading the
    ranks round-robin restores the dataset order; the duplicates that pad the last shard are dropped.
    ``order`` (the dataset's ids) restores it whatever order the batches came in (length-grouped
    evaluation batches do not come in dataset order); ids it does not list follow, as merged.
    """
    merged: dict[str, Any] = {}
    for row in itertools.zip_longest(*per_rank):
        for pair in row:
            if pair is not None and pair[0] not in merged:
                merged[pair[0]] = pair[1]
    if order is None:
        return merged
    ordered = {i: merged[i] for i in order if i in merged}
    ordered.update((i, value) for i, value in merged.items() if i not in ordered)
    return ordered
