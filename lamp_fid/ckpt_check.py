"""Checks on ``--ckpt_path`` before anything runs: weights only, this task, this run, this run's folder.

A checkpoint is read with ``torch.load(weights_only=True)`` (never a pickle that can run code), memory
mapped (the tensors are not read), and compared with the command's options:

* every command refuses a checkpoint of another task or another base model, and a PPlug checkpoint
  in a mode without PPlug (or the reverse): its user embedder's weights have nowhere to go;
* a resumed ``fit`` also refuses any change to a setting that changes what the run means (see
  ``FREE_DATA``/``FREE_MODEL`` for those that may differ), and a checkpoint whose saved state names
  checkpoint files outside the run's folder (Lightning would export, or delete, those files).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from lamp_fid.errors import LaMPError
from lamp_fid.setting import uses_pplug
from lamp_fid.tasks import get_task

# settings that may differ on resume: where files are and how fast they are read, not what is trained
FREE_DATA = frozenset({"data_dir", "cache_dir", "download", "num_workers", "eval_batch_size",
                       "test_split", "predict_split"})
FREE_MODEL = frozenset({"gradient_checkpointing", "skip_empty_passages"})
# what validate/test/predict must share with the checkpoint (decoding options may differ)
SAME_FOR_EVAL = frozenset({"task", "model_name_or_path"})
# keys Lightning adds to saved hyperparameters
_META = frozenset({"_instantiator", "_class_path"})
# settings linked from others (compared there): the model's task is set by --data.task, the data's
# tokenizer by --model.model_name_or_path; PPlug's mode, user encoder and pooling come from --data.*,
# the data's query instruction from --model.query_instruction
_LINKED = {("data", "task"), ("data", "tokenizer"), ("model", "mode"), ("model", "user_encoder"),
           ("model", "user_pooling"), ("data", "query_instruction")}
_SHOWN = {("model", "task"): "--data.task"}
# Lightning's special --ckpt_path values: "last" is <run>/last.ckpt, the others name no file here
SPECIAL = ("best", "hpc", "registry")


def load_weights(path: str | Path, where: str | None = None) -> dict:
    """``torch.load(path, weights_only=True)``, memory-mapped; a one-line LaMPError (starting with
    ``where``, default the path) if the file is missing, damaged, or holds anything but tensors and
    plain values."""
    where = where or str(path)
    p = Path(path)
    if not p.exists():
        raise LaMPError(f"{where}: no such file")
    if not p.is_file():
        raise LaMPError(f"{where}: not a file")
    if not zipfile.is_zipfile(p):  # torch.save's format since torch 1.6; a truncated file fails here
        raise LaMPError(f"{where}: not a PyTorch checkpoint (truncated, or another kind of file)")
    try:
        return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        named = re.search(r"GLOBAL ([\w.]+)", str(err))
        detail = f" (it names {named.group(1)})" if named else ""
        raise LaMPError(f"{where}: refused: it holds Python objects besides weights{detail}; lamp-fid "
                        "only loads checkpoints as weights (torch.load weights_only=True)") from None
    except Exception as err:  # a damaged archive: RuntimeError, OSError, EOFError, ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise LaMPError(f"{where}: not a readable PyTorch checkpoint ({first})") from None


def load_checkpoint(path: str | Path) -> dict:
    """The lamp-fid checkpoint at ``path`` (``load_weights``), with its state_dict and hyperparameters."""
    where = f"--ckpt_path {path}"
    ckpt = load_weights(path, where)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise LaMPError(f"{where}: not a Lightning checkpoint (no state_dict)")
    if not isinstance(ckpt.get("hyper_parameters"), dict) or "task" not in ckpt["hyper_parameters"]:
        raise LaMPError(f"{where}: not a lamp-fid checkpoint (no model hyper_parameters with a task)")
    return ckpt


def recorded_paths(ckpt: dict) -> list[str]:
    """The checkpoint files named by the ``ModelCheckpoint`` states saved in ``ckpt``."""
    paths = []
    for state in (ckpt.get("callbacks") or {}).values():
        if isinstance(state, dict):
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if state.get(key):
                    paths.append(str(state[key]))
            paths += [str(p) for p in (state.get("best_k_models") or {}) if p]
    return paths


def inside(path: str | Path, folder: str | Path) -> bool:
    """True if ``path`` (symlinks and ``..`` resolved) lies below ``folder``."""
    return Path(folder).resolve() in Path(path).resolve().parents


def _norm(key: str, value):
    if key == "task" and value is not None:
        try:
            return get_task(value).name
        except ValueError:
            return value
    return str(value) if isinstance(value, Path) else value


def setting_changes(ckpt: dict, data: dict, model: dict, resume: bool) -> list[str]:
    """``--<group>.<key>: old -> new`` for each setting of ``data``/``model`` that differs from the
    checkpoint's and must not (all but the free ones on resume; task and base model otherwise)."""
    changes = []
    groups = (("data", ckpt.get("datamodule_hyper_parameters") or {}, data, FREE_DATA),
              ("model", ckpt.get("hyper_parameters") or {}, model, FREE_MODEL))
    for group, saved, now, free in groups:
        for key, old in saved.items():
            if key in _META or (group, key) in _LINKED or key not in now:
                continue
            if (key in free) if resume else (key not in SAME_FOR_EVAL):
                continue
            if _norm(key, old) != _norm(key, now[key]):
                name = _SHOWN.get((group, key), f"--{group}.{key}")
                changes.append(f"{name}: {old} -> {now[key]}")
    if not resume:  # a PPlug checkpoint holds the user embedder's weights: only a PPlug mode loads them
        saved_mode = (ckpt.get("hyper_parameters") or {}).get("mode", "fid")
        now_mode = data.get("mode", model.get("mode", "fid"))
        if uses_pplug(str(saved_mode)) != uses_pplug(str(now_mode)):
            changes.append(f"--data.mode: {saved_mode} -> {now_mode}")
    return changes


def check_checkpoint(path: str, command: str, data: dict, model: dict, folders: list[Path]) -> None:
    """Refuse (one LaMPError line) a ``--ckpt_path`` that ``command`` must not load.

    Args:
        path: the checkpoint file.
        command: fit (a resume), validate, test or predict.
        data: the command's data options.
        model: the command's model options.
        folders: where this run writes checkpoints (the run folder first); a resume refuses a checkpoint
            whose saved state names files elsewhere.
    """
    ckpt = load_checkpoint(path)
    resume = command == "fit"
    if resume and not isinstance(ckpt.get("datamodule_hyper_parameters"), dict):
        raise LaMPError(f"--ckpt_path {path}: not a lamp-fid checkpoint (no datamodule "
                        "hyper_parameters): a resume needs the run's own last.ckpt")
    changes = setting_changes(ckpt, data, model, resume)
    if changes:
        what = "this resume changes the run's settings" if resume else "a checkpoint of another setting"
        raise LaMPError(f"--ckpt_path {path}: {what} ({'; '.join(changes)}); pass the run's own "
                        "settings (--config <run>/config.yaml)" + (" or start a new run" if resume else ""))
    if resume:
        for named in recorded_paths(ckpt):
            if not any(inside(named, folder) for folder in folders):
                raise LaMPError(f"--ckpt_path {path}: its saved state names {named}, outside the run "
                                f"folder {folders[0]}; a run resumes only in the folder that wrote it")
