"""kill -9 during fit, then `fit --ckpt_path <run>/last.ckpt`: the same run as the uninterrupted fit.

The uninterrupted and resumed fits run in this process (one thread, see conftest); the fit that is
killed runs in a subprocess that SIGKILLs itself from a test-only callback, mid-epoch, a few steps
after its last checkpoint. The tiny T5 has dropout, so the RNG state matters as much as the data order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from lamp_fid.cli import main
from lamp_fid.data.fake import write_fake_split
from lamp_fid.data.sampler import ResumableLoader, ResumableSampler
from tests.tiny import build_tiny_t5

ROOT = Path(__file__).resolve().parents[1]


class KillAt(Callback):
    """Test only: SIGKILL this process group (the fit's ranks) at the end of training step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.killpg(os.getpgrp(), signal.SIGKILL)


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


# --- kill -9 and resume ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = root / "data"
    # 18 train examples, batch 4: 5 batches an epoch, the last one short
    for split, n in (("train", 18), ("dev", 5)):
        write_fake_split(data, "LaMP_3", split, n, profile_size=(1, 4), words=(4, 10), seed=2)
    model = build_tiny_t5(root / "tiny", dropout_rate=0.1)
    return root, data, model


def fit_args(root: Path, data: Path, model: Path, run_name: str, *extra: str) -> list[str]:
    """12 steps (into the 3rd epoch), validation every 4 steps across epochs (like the demo configs)."""
    return [
        "fit", "--seed_everything", "3", "--run_name", run_name, "--runs_dir", str(root / "runs"),
        "--data.task", "LaMP_3", "--data.data_dir", str(data), "--data.cache_dir", str(root / "cache"),
        "--data.download", "false", "--data.batch_size", "4", "--data.max_length", "48",
        "--data.mode", "fid", "--data.k", "2", "--model.model_name_or_path", str(model),
        "--model.num_beams", "1", "--model.max_new_tokens", "3",
        "--trainer.accelerator", "cpu", "--trainer.max_steps", "12", "--trainer.max_epochs", "-1",
        "--trainer.val_check_interval", "4", "--trainer.check_val_every_n_epoch", "null",
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1", *extra,
    ]


def lamp_fid(args: list[str], kill_at: int | None = None) -> subprocess.CompletedProcess:
    """Run ``lamp-fid <args>`` in a new process group (one thread); with ``kill_at``, SIGKILL the group
    at the end of that step and expect it dead."""
    if kill_at is not None:
        killer = {"class_path": "tests.test_resume.KillAt", "init_args": {"step": kill_at}}
        args = [*args, f"--trainer.callbacks+={json.dumps(killer)}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "lamp_fid.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900, start_new_session=True)
    assert done.returncode == (0 if kill_at is None else -signal.SIGKILL), done.stderr[-3000:]
    return done


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_run(straight_dir: Path, resumed_dir: Path) -> None:
    """Bit-identical final weights and optimizer state, and the same results.json metrics."""
    straight, resumed = load(straight_dir / "last.ckpt"), load(resumed_dir / "last.ckpt")
    assert resumed["global_step"] == straight["global_step"] == 12
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    for a, b in zip(straight["optimizer_states"][0]["state"].values(),
                    resumed["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(a[name], b[name]) for name in a), "optimizer state differs"
    assert resumed["lr_schedulers"] == straight["lr_schedulers"]
    results = [json.loads((d / "results.json").read_text()) for d in (straight_dir, resumed_dir)]
    assert results[1]["metrics"] == results[0]["metrics"]
    assert (results[1]["epoch"], results[1]["step"]) == (results[0]["epoch"], results[0]["step"])


@pytest.fixture(scope="module")
def straight(setup_dir):
    root, data, model = setup_dir
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed and resumed fits (module fixtures precede conftest's)
    try:
        main(fit_args(root, data, model, "straight"))
    finally:
        torch.set_num_threads(threads)
    return root / "runs" / "straight"


@pytest.mark.parametrize("every, kill_at, resume_step", [
    (None, 7, 4),  # last.ckpt at validation only: step 4, mid-epoch 0 (4 of its 5 batches)
    (3, 11, 9),  # every 3 steps: step 9, mid-epoch 1 (written at the end of a training step)
    # every 5 steps: step 5, the last batch of epoch 0 (the next epoch's order is due; the unit test
    # test_a_state_saved_on_the_last_batch_starts_the_next_epoch covers it in the default suite)
    pytest.param(5, 7, 5, marks=pytest.mark.slow),
], ids=["at-validation", "every-3-steps-mid-epoch", "every-5-steps-epoch-end"])
def test_kill_9_then_resume_from_last_ckpt_is_the_uninterrupted_run(setup_dir, straight, every, kill_at,
                                                                    resume_step):
    root, data, model = setup_dir
    name = f"killed-{every}-{kill_at}"
    args = fit_args(root, data, model, name, *([] if every is None else ["--last_every_n_steps", str(every)]))
    lamp_fid(args, kill_at)
    run = root / "runs" / name
    assert load(run / "last.ckpt")["global_step"] == resume_step
    main([*args, "--ckpt_path", str(run / "last.ckpt")])
    assert_same_run(straight, run)


@pytest.mark.slow
def test_ddp_kill_9_then_resume_is_the_uninterrupted_run(setup_dir):
    """2 ranks (gloo): each rank's shard of the order and its RNG states are restored."""
    root, data, model = setup_dir
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--last_every_n_steps", "5"]
    lamp_fid(fit_args(root, data, model, "ddp-straight", *ddp))
    args = fit_args(root, data, model, "ddp-killed", *ddp)  # 3 batches an epoch on each rank
    lamp_fid(args, kill_at=7)  # last.ckpt: step 5, after the 2nd batch of epoch 1
    run = root / "runs" / "ddp-killed"
    assert load(run / "last.ckpt")["global_step"] == 5
    lamp_fid([*args, "--ckpt_path", str(run / "last.ckpt")])
    assert_same_run(root / "runs" / "ddp-straight", run)
