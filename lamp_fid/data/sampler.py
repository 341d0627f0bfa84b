"""The training data order: seeded by (seed, epoch) only, sharded under DDP, and resumable mid-epoch.

Lightning 2.x saves ``state_dict()`` of every train DataLoader that has one in ``last.ckpt`` (the fit
loop's ``combined_loader`` entry) and hands it back to ``load_state_dict()`` before the resumed fit
iterates again. Its progress counters then continue the interrupted epoch, so the loader must yield
exactly the batches the interrupted fit had not trained on yet: ``ResumableLoader`` does.
"""

from __future__ import annotations

from typing import Callable

from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """An epoch's indices: a permutation seeded by ``seed + epoch`` (dataset order without shuffle),
    padded and dealt to ``num_replicas`` ranks as ``DistributedSampler`` does (one rank: all of it).

    After ``load_state_dict`` the first iteration of the saved epoch skips the samples already trained
    on; any other epoch (``set_epoch``) starts from its beginning.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.skip = 0  #: samples of this rank's shard of ``self.epoch`` already trained on

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0
        super().set_epoch(epoch)

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def state_dict(self, trained: int = 0) -> dict:
        """The order's seed and epoch, and ``trained`` (samples of this rank trained on this epoch)
        counted over all ranks, so that a resume on as many ranks continues where this one stopped."""
        return {"seed": self.seed, "epoch": self.epoch, "shuffle": self.shuffle,
                "num_replicas": self.num_replicas, "trained": trained * self.num_replicas}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.shuffle = int(state["seed"]), bool(state["shuffle"])
        epoch, trained = int(state["epoch"]), int(state.get("trained", 0))
        if trained >= self.total_size:  # saved on the epoch's last batch: the next epoch is due
            epoch, trained = epoch + 1, 0
        self.epoch, self.skip = epoch, trained // self.num_replicas


class ResumableLoader(DataLoader):
    """A DataLoader over a ``ResumableSampler`` whose state Lightning saves in checkpoints.

    ``trained_batches`` returns how many batches of the current epoch the fit loop has trained on
    (the fetcher reads ahead of training, so the loader cannot count them itself).
    """

    def __init__(self, *args, trained_batches: Callable[[], int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.trained_batches = trained_batches

    def state_dict(self) -> dict:
        if not isinstance(self.sampler, ResumableSampler):  # e.g. replaced by --trainer.overfit_batches
            return {}
        batches = self.trained_batches() if self.trained_batches is not None else 0
        return self.sampler.state_dict(min(batches * self.batch_size, self.sampler.num_samples))

    def load_state_dict(self, state: dict) -> None:
        if state and isinstance(self.sampler, ResumableSampler):
            self.sampler.load_state_dict(state)
