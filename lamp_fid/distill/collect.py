"""Passage scores collected by the FiD reader during validate/test/predict, and where they are written.

``FiDModule(passage_scores="fid" | "atlas" | "pdist")`` computes :func:`lamp_fid.distill.scores.passage_scores`
on the fused encoder states that generation reads (one extra decoder step per batch), maps each passage
to its profile item id (:meth:`lamp_fid.data.module.LaMPDataModule.passage_items`) and keeps
``{question id: {profile item id: score}}`` for the epoch; the prediction writer puts them beside the
predictions, in :func:`scores_path` of the predictions file. This module holds the pieces the model,
the datamodule and the writer share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from lamp_fid.errors import LaMPError

PassageScores = Literal["none", "fid", "atlas", "pdist"]
#: the trainer's stage -> the datamodule option naming the split it reads
STAGE_SPLIT = {"validate": "val_split", "test": "test_split", "predict": "predict_split"}


def scores_path(predictions_path: str | Path) -> Path:
    """The scores file written beside a predictions file: ``<name>.scores.json`` for ``<name>.json``
    (e.g. ``LaMP_2-predict-predictions.json`` -> ``LaMP_2-predict-predictions.scores.json``), and
    ``<file name>.scores.json`` for a file without the ``.json`` suffix."""
    path = Path(predictions_path)
    stem = path.name[: -len(".json")] if path.suffix == ".json" else path.name
    return path.with_name(f"{stem}.scores.json")


def check_mode(mode: str, option: str = "--model.passage_scores") -> None:
    """Refuse passage scores for a mode whose passages do not hold one profile item each."""
    if mode != "fid":
        raise LaMPError(f"{option} needs --data.mode fid (one profile item per passage), "
                        f"got --data.mode {mode}")


def stage_split(datamodule, stage: str) -> str:
    """The split ``datamodule`` (a :class:`~lamp_fid.data.module.LaMPDataModule`) serves to ``stage``."""
    try:
        return datamodule.hparams[STAGE_SPLIT[stage]]
    except KeyError:
        raise LaMPError(f"passage scores are collected in validate, test and predict, not {stage}") from None


def split_has_outputs(dataset) -> bool:
    """Whether a set-up dataset (a ``TokenDataset`` or a ``PassageDataset``) has gold outputs."""
    targets = getattr(dataset, "targets", None)
    store = getattr(dataset, "store", None)
    return targets is not None if store is None else bool(store.has_outputs)


def items_of_batch(passage_items: Mapping[str, Sequence[str | None]], question_ids: Sequence[str]
                   ) -> list[Sequence[str | None]]:
    """The per-passage item ids of a batch's questions (one line naming the first unknown question)."""
    try:
        return [passage_items[qid] for qid in question_ids]
    except KeyError as err:
        raise LaMPError(f"passage scores: no passage item ids for question {err.args[0]!r} (the model's "
                        "passage_items come from another split or setting)") from None
