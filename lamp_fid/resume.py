"""What a fit needs to continue after a kill as if it had never stopped: ``last.ckpt`` and the RNG states.

A checkpoint written by Lightning holds the weights, the optimizer and scheduler states, the loop
counters (epoch, step, batch of the epoch) and the callbacks' states; lamp-fid adds the training data
order (``lamp_fid.data.sampler``) and, with ``RNGState``, the random number generators, so that a fit
killed with ``kill -9`` and resumed from ``last.ckpt`` ends with the uninterrupted fit's weights.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from lamp_fid.errors import LaMPError
from lamp_fid.distributed import gather_objects


class LastCheckpoint(ModelCheckpoint):
    """``<run>/last.ckpt``, the run's resume point: after every validation (or epoch) and, with
    ``every_n_steps``, every that many optimizer steps in between.

    Lightning 2.6's ``save_last`` only writes when a top-k checkpoint was written at the same step, so
    after a validation that did not improve ``last.ckpt`` would be an older state: this second
    checkpoint callback (no monitor: it always keeps the latest) writes it instead. A step that a
    validation follows is saved at the validation's end, never before it: a fit resumed from a
    checkpoint written between a step and its validation would skip that validation.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int | None = None):
        if every_n_steps is not None and every_n_steps < 1:
            raise LaMPError(f"--last_every_n_steps {every_n_steps}: give a number of steps >= 1 (or leave "
                            "it unset: last.ckpt is then written after every validation)")
        super().__init__(dirpath=str(dirpath), filename="last", monitor=None, save_top_k=1,
                         enable_version_counter=False)
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = self.every_n_steps
        if not n or trainer.global_step % n or self._should_skip_saving_checkpoint(trainer):
            return
        loop = trainer.fit_loop.epoch_loop
        # mid gradient accumulation (the accumulated gradients are not saved), or a validation follows
        if loop._should_accumulate() or loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            return
        self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))


def _rng_states() -> dict:
    """This process's generators, in types that ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


class RNGState(Callback):
    """Saves every rank's torch (CPU and current CUDA device), numpy and Python RNG states in each
    checkpoint, and restores them when the resumed fit starts training (dropout draws continue).

    The states are collected when the checkpoint is written and set back at ``on_train_start``: what
    runs in between (restoring, the sanity check, which Lightning isolates, building the loaders,
    which draw from their own generators) draws nothing from them.
    """

    def __init__(self):
        self._to_restore: list[dict] | None = None

    def state_dict(self) -> dict:
        return {"ranks": gather_objects(_rng_states())}  # a collective: every rank writes a checkpoint

    def load_state_dict(self, state_dict: dict) -> None:
        self._to_restore = state_dict.get("ranks") or None

    def on_train_start(self, trainer, pl_module) -> None:
        if self._to_restore:  # another world size: the rank's own states cannot all be matched
            _set_rng_states(self._to_restore[trainer.global_rank % len(self._to_restore)])
            self._to_restore = None
