"""Hostile run folders: two writers at once, a full disk while a checkpoint is written, kill -9 leftovers."""

from __future__ import annotations

import errno
import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lamp_fid.cli import main
from lamp_fid.data.fake import write_fake_split
from lamp_fid.errors import LaMPError
from lamp_fid.runfolder import LOCK_NAME, AtomicCheckpointIO, RunFolderLock
from tests.tiny import build_tiny_t5

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_runs")
    data = root / "data"
    for split, n in (("train", 8), ("dev", 4)):
        write_fake_split(data, "LaMP_3", split, n, profile_size=(1, 3), words=(4, 8), seed=5)
    return root, data, build_tiny_t5(root / "tiny")


def fit_args(root: Path, data: Path, model: Path, run_name: str, *extra: str) -> list[str]:
    """A 2-step epoch (batch 4 of 8 examples) and a validation after each epoch."""
    return [
        "fit", "--run_name", run_name, "--runs_dir", str(root / "runs"), "--data.task", "LaMP_3",
        "--data.data_dir", str(data), "--data.cache_dir", str(root / "cache"), "--data.download", "false",
        "--data.batch_size", "4", "--data.max_length", "40", "--data.mode", "fid", "--data.k", "2",
        "--model.model_name_or_path", str(model), "--model.num_beams", "1", "--model.max_new_tokens", "3",
        "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1", *extra,
    ]


def fails_with_one_line(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("lamp-fid fit: error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith(".tmp"))


# --- one writer per run folder ------------------------------------------------------------------

def hold_lock_in_another_process(run_dir: Path) -> subprocess.Popen:
    code = ("import sys, time; from lamp_fid.runfolder import RunFolderLock; "
            "lock = RunFolderLock(sys.argv[1]); lock.acquire(); print('locked', flush=True); time.sleep(600)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_fit_into_a_run_folder_in_use_is_refused_and_kill_9_frees_it(setup_dir, capsys):
    root, data, model = setup_dir
    run = root / "runs" / "busy"
    holder = hold_lock_in_another_process(run)  # e.g. a requeued SLURM job while the first still runs
    try:
        line = fails_with_one_line(fit_args(root, data, model, "busy"), capsys)
        assert f"{run} is in use by another fit (pid {holder.pid} on " in line
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # the refused fit wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    lock = RunFolderLock(run)  # the OS dropped the dead holder's lock: no stale lock to clean up
    lock.acquire()
    lock.release()


def test_the_lock_names_its_holder_is_released_and_removes_a_killed_writers_temp_files(tmp_path):
    first, second = RunFolderLock(tmp_path), RunFolderLock(tmp_path)
    (tmp_path / ".last.ckpt.k2j4x8.tmp").write_bytes(b"half a checkpoint")  # a writer killed mid-save
    (tmp_path / ".notes.tmp").write_text("not ours")
    first.acquire()
    assert not (tmp_path / ".last.ckpt.k2j4x8.tmp").exists() and (tmp_path / ".notes.tmp").exists()
    assert (tmp_path / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} on ")
    with pytest.raises(LaMPError, match=rf"is in use by another fit \(pid {os.getpid()} on "):
        second.acquire()  # flock locks open files: a second one in the same process is refused too
    first.release()
    second.acquire()
    assert second.held
    second.release()
    assert (tmp_path / LOCK_NAME).read_text() == ""


def test_a_filesystem_without_locks_warns_and_does_not_block_training(tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock = RunFolderLock(tmp_path)
    with pytest.warns(UserWarning, match="cannot lock the run folder .*No locks available"):
        lock.acquire()
    assert not lock.held


def test_a_resumed_fit_takes_the_lock_after_the_previous_one_ended(setup_dir):
    """Sequential fits (tune's cells, a resume) are not refused: fit releases the lock at its end."""
    root, data, model = setup_dir
    args = fit_args(root, data, model, "sequential")
    main(args)
    run = root / "runs" / "sequential"
    main([*fit_args(root, data, model, "sequential", "--trainer.max_epochs", "2"),
          "--ckpt_path", str(run / "last.ckpt")])
    assert torch.load(run / "last.ckpt", weights_only=True)["epoch"] == 1
    RunFolderLock(run).acquire()


# --- a full disk while a checkpoint is written ---------------------------------------------------

def disk_full_in_torch_save(monkeypatch) -> None:
    """torch.save writes half of the checkpoint, then the disk is full."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save)


def disk_full_when_moved_into_place(monkeypatch) -> None:
    """A checkpoint staged on another filesystem is copied into the run folder, which is full."""
    def move(src, dst, *args, **kwargs):
        with open(src, "rb") as f, open(dst, "wb") as out:
            out.write(f.read()[:1000])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "move", move)


def test_a_full_disk_while_saving_keeps_the_previous_last_ckpt_and_the_run_resumes(setup_dir, capsys,
                                                                                  monkeypatch):
    root, data, model = setup_dir
    name = "disk-full"
    run = root / "runs" / name
    main(fit_args(root, data, model, name))
    before = (run / "last.ckpt").read_bytes()
    files = sorted(p.name for p in run.glob("*.ckpt"))
    resume = [*fit_args(root, data, model, name, "--trainer.max_epochs", "2"),
              "--ckpt_path", str(run / "last.ckpt")]
    with monkeypatch.context() as patch:
        disk_full_in_torch_save(patch)
        line = fails_with_one_line(resume, capsys)
    assert f"{run}/" in line and "no space left on device" in line
    assert (run / "last.ckpt").read_bytes() == before  # never a truncated file under the final name
    assert sorted(p.name for p in run.glob("*.ckpt")) == files
    assert temps(run) == []
    main(resume)  # not stuck: space is back, the same command resumes
    assert torch.load(run / "last.ckpt", weights_only=True)["epoch"] == 1


def test_a_checkpoint_is_written_in_its_folder_never_copied_in_from_another_filesystem(setup_dir,
                                                                                     monkeypatch):
    """Lightning's default stages a checkpoint in the system temp folder and moves it into place: from
    another filesystem (a node's /tmp, runs on shared storage) that is a copy, which a full disk cuts
    short under the final name. lamp-fid writes next to the final name and renames."""
    root, data, model = setup_dir
    run = root / "runs" / "moved"
    main(fit_args(root, data, model, "moved"))
    with monkeypatch.context() as patch:
        disk_full_when_moved_into_place(patch)
        main([*fit_args(root, data, model, "moved", "--trainer.max_epochs", "2"),
              "--ckpt_path", str(run / "last.ckpt")])
    assert torch.load(run / "last.ckpt", weights_only=True)["epoch"] == 1 and temps(run) == []


def test_checkpoint_io_on_a_write_that_fails_part_way(tmp_path, monkeypatch):
    """The real failure path: the file's write raises ENOSPC inside torch.save (which turns it into a
    RuntimeError without errno) after part of the checkpoint is on disk."""
    import lamp_fid.runfolder as runfolder

    io_ = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io_.save_checkpoint({"step": 1, "w": torch.arange(10.0)}, target)
    before = target.read_bytes()
    real_create = runfolder._create_temp

    class FullDisk(io.FileIO):
        room = 300

        def write(self, data):
            if self.room < len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.room -= len(data)
            return super().write(data)

    def create(path):
        tmp, f = real_create(path)
        f.close()
        return tmp, FullDisk(tmp, "wb")

    monkeypatch.setattr(runfolder, "_create_temp", create)
    with pytest.raises(LaMPError, match=rf"^{tmp_path}/last.ckpt: no space left on device"):
        io_.save_checkpoint({"step": 2, "w": torch.arange(10_000.0)}, target)
    assert target.read_bytes() == before and temps(tmp_path) == []
    assert io_.load_checkpoint(target)["step"] == 1


def test_checkpoint_io_keeps_the_umask_and_loads_weights_only(tmp_path):
    old = os.umask(0o027)
    try:
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(2)}, tmp_path / "a.ckpt")
    finally:
        os.umask(old)
    assert (tmp_path / "a.ckpt").stat().st_mode & 0o777 == 0o640
    torch.save({"payload": Path("x")}, tmp_path / "pickled.ckpt")  # an arbitrary pickled object
    with pytest.raises(Exception, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "pickled.ckpt", weights_only=False)


def test_last_every_n_steps_below_one_is_refused_in_one_line(setup_dir, capsys):
    root, data, model = setup_dir
    line = fails_with_one_line(fit_args(root, data, model, "every-0", "--last_every_n_steps", "0"), capsys)
    assert "--last_every_n_steps 0: give a number of steps >= 1" in line
    assert not (root / "runs" / "every-0").exists()
