"""One run's setting: its name, what its ``results.json`` says, and the names of modes, retrievers, splits.

The non-personalized baseline can be spelled three ways in a config (``mode: none``, ``retriever:
none``, ``k: 0``): each gives the bare input, and :class:`RunSetting` turns each into the one baseline
(mode none, retriever none, k 0), so run names, ``results.json``, ``tune`` and ``report`` agree.
The PPlug modes are never the baseline: ``pplug`` is the bare input plus PPlug's soft tokens, and
``pplug+ipa``/``pplug+fid`` with retriever none or k 0 become that one ``pplug`` setting.

A run folder holds ``results.json`` after ``fit`` (the best epoch's validation metrics) and
``<stage>/version_N/results.json`` after ``validate``/``test``: :func:`write_results` writes them,
:func:`read_results` reads them back.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from lamp_fid.errors import LaMPError
from lamp_fid.io import atomic_write
from lamp_fid.tasks import get_task

#: How the k items reach the model: one passage each (fid), one prompt (ipa); the ``pplug`` modes add
#: PPlug's two soft tokens (a user embedding of the whole history) to the bare input (pplug) or to the
#: ipa/fid passages (``pplug+ipa``, ``pplug+fid``).
PersonalMode = Literal["fid", "ipa", "pplug", "pplug+ipa", "pplug+fid"]
Mode = Literal[PersonalMode, "none"]  #: ``none``: the bare input (the baseline)
PassageMode = Literal["fid", "ipa", "none"]  #: what the passages are, soft tokens aside
PPLUG_MODES: tuple[str, ...] = ("pplug", "pplug+ipa", "pplug+fid")
Layout = Literal["official", "separate"]  #: FiD passages: input + item each, or the input alone first
PersonalRetriever = Literal["bm25", "dense", "recency", "random"]
RetrieverName = Literal[PersonalRetriever, "none"]
Split = Literal["train", "dev", "test"]


def split_mode(mode: str) -> tuple[str, bool]:
    """``(passage mode, uses PPlug)``: ``fid`` -> ``("fid", False)``, ``pplug`` -> ``("none", True)``,
    ``pplug+fid`` -> ``("fid", True)``. An unknown mode is a one-line LaMPError."""
    if mode not in get_args(Mode):
        raise LaMPError(f"unknown mode {mode!r}; expected one of {', '.join(get_args(Mode))}")
    if mode == "pplug":
        return "none", True
    if mode.startswith("pplug+"):
        return mode.removeprefix("pplug+"), True
    return mode, False


def uses_pplug(mode: str) -> bool:
    """Does ``mode`` prepend PPlug's soft tokens (pplug, pplug+ipa, pplug+fid)?"""
    return mode in PPLUG_MODES


def is_baseline(mode: str, retriever: str | None = None, k: int | None = None) -> bool:
    """Is this the non-personalized baseline? Mode none, retriever none and k 0 each mean it, except in
    the PPlug modes, which are personalized by the user embedding whatever the retrieved items (there
    retriever none or k 0 means PPlug alone, ``pplug``)."""
    if uses_pplug(mode):
        return False
    return mode == "none" or retriever == "none" or (k is not None and k <= 0)


def passages_are_bare(mode: str, retriever: str | None = None, k: int | None = None) -> bool:
    """Do the passages hold the bare input only (no retrieved item)? True for the baseline and for
    ``pplug`` (and a pplug+ipa/fid setting with retriever none or k 0, which is ``pplug``)."""
    if uses_pplug(mode):
        return mode == "pplug" or retriever == "none" or (k is not None and k <= 0)
    return is_baseline(mode, retriever, k)


def _check(name: str, value: Any, allowed) -> None:
    if value not in get_args(allowed):
        raise ValueError(f"{name} {value!r}: not one of {', '.join(get_args(allowed))}")


@dataclass(frozen=True)
class RunSetting:
    """What a run trains and evaluates: the fields of its name and of its ``results.json``.

    ``task`` is stored by its canonical name (``LaMP-3`` -> ``LaMP_3``); every spelling of the
    baseline becomes mode none, retriever none, k 0. A bad value is a ``ValueError``.
    """

    task: str
    mode: Mode
    retriever: RetrieverName
    k: int
    layout: Layout = "official"
    time_split: bool = False
    val_split: Split = "dev"
    test_split: Split = "dev"
    model: str = "?"

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: the one normalisation happens here
        set_(self, "task", get_task(self.task).name)
        _check("mode", self.mode, Mode)
        _check("retriever", self.retriever, RetrieverName)
        _check("layout", self.layout, Layout)
        _check("val_split", self.val_split, Split)
        _check("test_split", self.test_split, Split)
        if is_baseline(self.mode, self.retriever, self.k):
            set_(self, "mode", "none")
            set_(self, "retriever", "none")
            set_(self, "k", 0)
        elif passages_are_bare(self.mode, self.retriever, self.k):  # PPlug without retrieved items
            set_(self, "mode", "pplug")
            set_(self, "retriever", "none")
            set_(self, "k", 0)

    @classmethod
    def from_data(cls, data: Mapping, model: str = "?") -> RunSetting:
        """The setting of a ``LaMPDataModule``'s options (a parsed config's ``data`` section, every
        option present) and the base model."""
        return cls(task=data["task"], mode=data["mode"], retriever=data["retriever"], k=int(data["k"]),
                   layout=data["layout"], time_split=bool(data["time_split"]), val_split=data["val_split"],
                   test_split=data["test_split"], model=str(model))

    @property
    def is_baseline(self) -> bool:
        return self.mode == "none"

    def run_name(self) -> str:
        """The default run folder name: ``LaMP_3-fid-bm25-k4`` (``-time`` for the time split, the layout
        after the mode when it is not official, ``LaMP_3-none`` for the baseline, ``LaMP_3-pplug`` for
        PPlug alone, ``LaMP_3-pplug+fid-bm25-k4`` combined)."""
        if self.is_baseline or self.mode == "pplug":
            name = f"{self.task}-{self.mode}"
        else:
            layout = "" if self.layout == "official" else f"-{self.layout}"
            name = f"{self.task}-{self.mode}{layout}-{self.retriever}-k{self.k}"
        return name + ("-time" if self.time_split else "")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunResults:
    """One ``results.json``: a run's setting, the stage and split it scored, and its metrics.

    ``metrics`` keep their logged names (``val/MAE``, ``test/accuracy``); ``monitor``,
    ``best_checkpoint``, ``epoch`` and ``step`` are those of a fit's best epoch (None otherwise).
    """

    setting: RunSetting
    run_name: str
    stage: str | None
    split: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    monitor: str | None = None
    best_checkpoint: str | None = None
    epoch: int | None = None
    step: int | None = None


_OPTIONAL = ("monitor", "best_checkpoint", "epoch", "step")


def write_results(path: str | Path, results: RunResults) -> Path:
    """Write ``results`` to ``path`` (atomically, replacing an older file): the setting's fields at
    the top level, then run_name, stage, split, metrics and the fit's optional fields."""
    payload = {**results.setting.as_dict(), "run_name": results.run_name, "stage": results.stage,
               "split": results.split, "metrics": results.metrics}
    payload.update({key: getattr(results, key) for key in _OPTIONAL if getattr(results, key) is not None})
    return atomic_write(path, json.dumps(payload, indent=2, sort_keys=True) + "\n", overwrite=True)


def read_results(path: str | Path) -> RunResults:
    """Parse one ``results.json``; one ``LaMPError`` line naming the file if it is not one.

    Files of older lamp-fid versions may lack the layout (official), the split kind (user), the
    evaluation splits (dev) and the model (``?``); a baseline needs no retriever or k.
    """
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise TypeError(f"a JSON {type(raw).__name__}, not an object")
        mode = str(raw["mode"])
        baseline = mode in ("none", "pplug")  # no retrieved items
        setting = RunSetting(
            task=raw["task"], mode=mode, retriever="none" if baseline else str(raw["retriever"]),
            k=0 if baseline else int(raw["k"]), layout=str(raw.get("layout") or "official"),
            time_split=bool(raw.get("time_split", False)), val_split=raw.get("val_split") or "dev",
            test_split=raw.get("test_split") or "dev", model=str(raw.get("model") or "?"))
        metrics = raw.get("metrics") or {}
        if not isinstance(metrics, dict):
            raise TypeError(f"metrics is a {type(metrics).__name__}, not an object")
        return RunResults(setting, run_name=str(raw.get("run_name") or ""), stage=raw.get("stage"),
                          split=raw.get("split"), metrics=metrics,
                          **{key: raw.get(key) for key in _OPTIONAL})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise LaMPError(f"{path}: not a lamp-fid results.json ({type(err).__name__}: {err})") from None
