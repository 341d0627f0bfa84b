"""The training data order: seeded by (seed, epoch), sharded, resumable mid-epoch."""

from __future__ import annotations

import pytest
import torch

from lamp_fid.data.sampler import ResumableLoader, ResumableSampler


# --- the data order ------------------------------------------------------------------------------

def batches(loader) -> list[list[int]]:
    return [b.tolist() for b in loader]


def loaders(n: int, ranks: int, seed: int = 7, batch_size: int = 2) -> list[ResumableLoader]:
    return [ResumableLoader(list(range(n)), batch_size=batch_size,
                            sampler=ResumableSampler(list(range(n)), ranks, r, seed=seed)) for r in range(ranks)]


def test_the_order_depends_only_on_seed_and_epoch_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    (a,), (b,) = loaders(10, 1), loaders(10, 1)
    list(a.sampler)
    assert torch.equal(torch.get_rng_state(), state)  # dropout draws are not shifted by the data order
    first = batches(a)
    assert batches(a) == batches(b) == first and sorted(sum(first, [])) == list(range(10))
    a.sampler.set_epoch(1)
    assert batches(a) != first and sorted(sum(batches(a), [])) == list(range(10))
    assert batches(loaders(10, 1, seed=8)[0]) != first


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_mid_epoch_state_resumes_with_the_batches_not_trained_on(ranks):
    n, epoch, trained = 11, 3, 2  # 11 samples: the last batch is short, and with 2 ranks one is padded
    straight = loaders(n, ranks)
    for loader in straight:
        loader.sampler.set_epoch(epoch)
    expected = [batches(loader) for loader in straight]
    if ranks == 2:  # every sample on some rank, a shard each
        dealt = sum((sum(b, []) for b in expected), [])
        assert set(dealt) == set(range(n)) and len(dealt) == n + 1
    for rank, loader in enumerate(straight):
        loader.trained_batches = lambda: trained  # what Lightning's fit loop reports when saving
        state = loader.state_dict()
        assert state == {"seed": 7, "epoch": epoch, "shuffle": True, "num_replicas": ranks,
                         "trained": trained * 2 * ranks}
        resumed = loaders(n, ranks, seed=99)[rank]  # a new process: the seed comes from the state
        resumed.load_state_dict(state)
        assert batches(resumed) == expected[rank][trained:]
        resumed.sampler.set_epoch(epoch)  # Lightning sets the same epoch again: still resumed
        assert batches(resumed) == expected[rank][trained:]
        resumed.sampler.set_epoch(epoch + 1)  # the next epoch starts at its beginning
        straight[rank].sampler.set_epoch(epoch + 1)
        assert batches(resumed) == batches(straight[rank])


def test_a_state_saved_on_the_last_batch_starts_the_next_epoch():
    (loader,) = loaders(5, 1)
    loader.trained_batches = lambda: 3  # 5 samples, batch 2: the epoch's 3 batches are all trained on
    state = loader.state_dict()
    (resumed,) = loaders(5, 1)
    resumed.load_state_dict(state)
    loader.sampler.set_epoch(1)
    assert resumed.sampler.epoch == 1 and batches(resumed) == batches(loader)
