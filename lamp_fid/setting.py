"""One run's setting: its name, what its ``results.json`` says, and the names of modes, retrievers, splits.

The non-personalized baseline can be spelled three ways in a config (``mode: none``, ``retriever:
none``, ``k: 0``): each gives the bare input, and :class:`RunSetting` turns each into the one baseline
(mode none, retriever none, k 0), so run names, ``results.json``, ``tune`` and ``report`` agree.

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

PersonalMode = Literal["fid", "ipa"]  #: how the k items reach the model: one passage each, or one prompt
Mode = Literal[PersonalMode, "none"]  #: ``none``: the bare input (the baseline)
Layout = Literal["official", "separate"]  #: FiD passages: input + item each, or the input alone first
PersonalRetriever = Literal["bm25", "dense", "recency", "random"]
RetrieverName = Literal[PersonalRetriever, "none"]
Split = Literal["train", "dev", "test"]


def is_baseline(mode: str, retriever: str | None = None, k: int | None = None) -> bool:
    """Is this the non-personalized baseline? Mode none, retriever none and k 0 each mean it."""
    return mode == "none" or retriever == "none" or (k is not None and k <= 0)


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
        after the mode when it is not official, ``LaMP_3-none`` for the baseline)."""
        if self.is_baseline:
            name = f"{self.task}-none"
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
        baseline = mode == "none"
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
