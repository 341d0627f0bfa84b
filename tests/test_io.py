"""lamp_fid.io: the one atomic writer (atomic_open / atomic_write / check_target) and stale-temp cleanup."""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lamp_fid import io as lio
from lamp_fid.errors import LaMPError
from lamp_fid.io import atomic_folder, atomic_open, atomic_write, check_target, clean_stale_temps, exists_message

ROOT = Path(__file__).resolve().parents[1]


def temps(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_text_and_bytes_create_parents(tmp_path):
    assert atomic_write(tmp_path / "a" / "b" / "x.txt", "é\n").read_text(encoding="utf-8") == "é\n"
    with atomic_open(tmp_path / "y.bin", "wb") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "y.bin").read_bytes() == b"\x00\x01"
    with atomic_open(tmp_path / "z.txt") as f:
        f.write("東京")
    assert (tmp_path / "z.txt").read_text(encoding="utf-8") == "東京"
    assert temps(tmp_path) == []
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "w.txt", "a"):
            pass


def test_refusal_is_worded_once_and_overwrite_replaces(tmp_path):
    path = atomic_write(tmp_path / "x.json", "old")
    for attempt in (lambda: atomic_write(path, "new"), lambda: check_target(path)):
        with pytest.raises(LaMPError) as info:
            attempt()
        assert str(info.value) == exists_message(path) == f"{path} already exists: pass --overwrite true to replace it"
    assert path.read_text() == "old"
    atomic_write(path, "new", overwrite=True)
    assert path.read_text() == "new" and temps(tmp_path) == []


def test_a_file_that_appears_while_writing_is_never_replaced(tmp_path):
    path = tmp_path / "out.json"
    with pytest.raises(LaMPError, match="already exists"):
        with atomic_open(path) as f:
            f.write("mine")
            path.write_text("someone else's")  # created after the up-front check
    assert path.read_text() == "someone else's" and temps(tmp_path) == []


def test_failure_inside_the_block_leaves_the_target_and_no_temp(tmp_path):
    path = atomic_write(tmp_path / "x.txt", "before")
    with pytest.raises(KeyError):
        with atomic_open(path, overwrite=True) as f:
            f.write("half")
            raise KeyError("boom")
    with pytest.raises(FileNotFoundError):  # the caller's own OSError is not relabelled
        with atomic_open(path, overwrite=True) as f:
            open(tmp_path / "missing")
    assert path.read_text() == "before" and temps(tmp_path) == []


def test_permissions_follow_the_umask_and_an_overwritten_file_keeps_its_mode(tmp_path):
    old = os.umask(0o027)
    try:
        path = atomic_write(tmp_path / "x.txt", "a")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        os.chmod(path, 0o604)
        atomic_write(path, "b", overwrite=True)
        assert stat.S_IMODE(path.stat().st_mode) == 0o604
    finally:
        os.umask(old)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_a_failing_disk_is_one_line_naming_the_path(tmp_path, monkeypatch, code):
    path = atomic_write(tmp_path / "x.txt", "before")

    def fail(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(lio.os, "fsync", fail)
    with pytest.raises(LaMPError, match=f"^cannot write {path}: {os.strerror(code)}$"):
        atomic_write(path, "after", overwrite=True)
    assert path.read_text() == "before" and temps(tmp_path) == []


def test_write_full_disk_inside_the_block_is_one_line(tmp_path):
    class Full:
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(LaMPError, match="cannot write .*x.txt: No space left on device"):
        with atomic_open(tmp_path / "x.txt", "wb"):
            Full().write(b"x")
    assert temps(tmp_path) == [] and not (tmp_path / "x.txt").exists()


def test_folder_problems_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(LaMPError, match="cannot create the folder .*file/sub"):
        atomic_write(tmp_path / "file" / "sub" / "x.txt", "a")  # ENOTDIR
    with pytest.raises(LaMPError, match="cannot create the folder .*is a file, not a folder"):
        atomic_write(tmp_path / "file" / "x.txt", "a")
    with pytest.raises(LaMPError, match="is a folder, not a file name"):
        atomic_write(tmp_path, "a", overwrite=True)  # EISDIR
    real_open = os.open

    def denied(path, *a, **k):
        if str(path).endswith(".tmp"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(lio.os, "open", denied)  # root ignores chmod: simulate a read-only folder
    with pytest.raises(LaMPError, match="cannot write .*y.txt: Permission denied"):
        atomic_write(tmp_path / "y.txt", "a")


def _hold_a_temp(folder):
    """A child process that is writing (blocked in fsync) a file in ``folder``: returns it and its temp."""
    code = ("import os, sys, time\n"
            "import lamp_fid.io as io\n"
            "def stuck(fd):\n"
            "    print('ready', flush=True)\n"
            "    time.sleep(600)\n"
            "io.os.fsync = stuck\n"
            f"io.atomic_write({str(folder / 'out.json')!r}, 'x')\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert child.stdout.readline().strip() == "ready"
    (temp,) = [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    return child, temp


def test_a_live_writers_temp_is_kept_a_dead_ones_removed(tmp_path):
    child, temp = _hold_a_temp(tmp_path)
    try:
        old = time.time() - 3600
        os.utime(temp, (old, old))
        assert clean_stale_temps(tmp_path) == [] and temp.exists()  # locked by a live writer
    finally:
        child.kill()
        child.wait()
    young = tmp_path / ".other.json.0123456789abcdef.tmp"
    young.write_text("just created")  # younger than the grace period: maybe not locked yet
    not_ours = tmp_path / ".notes.tmp"
    not_ours.write_text("a user's file")
    os.utime(not_ours, (old, old))
    assert clean_stale_temps(tmp_path) == [temp]
    assert young.exists() and not_ours.exists()


# --- atomic_folder: a folder written file by file (save_pretrained) --------------------------------

def _export(folder: Path, text: str) -> None:
    (folder / "config.json").write_text(text)
    (folder / "weights.bin").write_bytes(b"\0" * 10)


def test_a_folder_appears_whole_and_replaces_only_an_earlier_one(tmp_path):
    target = tmp_path / "runs" / "hf_best"
    with atomic_folder(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".hf_best.") and not target.exists()
        _export(tmp, "1")
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "weights.bin"]
    with pytest.raises(LaMPError, match=re.escape(exists_message(target))):
        with atomic_folder(target):
            pass
    with atomic_folder(target, overwrite=True) as tmp:
        _export(tmp, "2")
    assert (target / "config.json").read_text() == "2"
    assert sorted(p.name for p in target.parent.iterdir()) == ["hf_best"]  # no temp or old folder left
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep me")
    with pytest.raises(LaMPError, match="notes is not a model folder .no config.json.: not replacing it"):
        with atomic_folder(notes, overwrite=True):
            pass
    assert [p.name for p in notes.iterdir()] == ["mine.txt"]


def test_a_failed_folder_write_leaves_the_old_folder_and_no_temp(tmp_path):
    target = tmp_path / "enc"
    with atomic_folder(target) as tmp:
        _export(tmp, "old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_folder(target, overwrite=True) as tmp:
            _export(tmp, "new")
            raise RuntimeError("interrupted")
    with pytest.raises(LaMPError, match="cannot write .*enc: No space left on device"):
        with atomic_folder(target, overwrite=True):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "somewhere/weights.bin")
    assert (target / "config.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]


def test_a_dead_writers_temp_folder_is_removed_a_live_ones_kept(tmp_path):
    old = time.time() - 3600
    with atomic_folder(tmp_path / "live") as live:
        _export(live, "x")
        os.utime(live, (old, old))
        assert clean_stale_temps(tmp_path) == [] and live.exists()  # locked by this writer
    dead = tmp_path / ".hf_best.0123456789abcdef.tmp"  # a killed writer's: nobody holds its lock
    dead.mkdir()
    _export(dead, "x")
    os.utime(dead, (old, old))
    assert clean_stale_temps(tmp_path) == [dead] and not dead.exists()


# --- every command's output goes through check_target: one wording, before any slow work ------------

@pytest.mark.parametrize("command", ["evaluate", "submit"])
def test_commands_refuse_an_existing_output_in_the_one_wording_before_reading(tmp_path, command):
    from lamp_fid.evaluate import evaluate
    from lamp_fid.submit import submit

    missing = tmp_path / "no-such-input"  # never read: the refusal comes first
    run = {"evaluate": lambda out, **kw: evaluate(missing, missing, output=out, **kw),
           "submit": lambda out, **kw: submit(missing, out, questions_dir=missing, **kw)}[command]
    taken = tmp_path / "taken.json"
    taken.write_text("keep me")
    with pytest.raises(LaMPError, match=f"^{re.escape(exists_message(taken))}$"):
        run(taken)
    with pytest.raises(LaMPError, match="is a folder, not a file name"):
        run(tmp_path, overwrite=True)
    assert taken.read_text() == "keep me"
