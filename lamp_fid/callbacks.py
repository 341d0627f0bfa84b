"""Callbacks that turn a run into files users keep: official-format predictions and an HF export."""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import BasePredictionWriter

from lamp_fid.ckpt_check import inside, load_weights
from lamp_fid.distributed import gather_objects, merge_rank_outputs
from lamp_fid.errors import LaMPError
from lamp_fid.io import atomic_folder, check_folder_target
from lamp_fid.predictions import write_predictions
from lamp_fid.tasks import get_task

log = logging.getLogger("lamp_fid")
EXPORT = "a model export folder"  # what HFExport replaces: a folder with a config.json


def _task_of(trainer, pl_module):
    task = getattr(pl_module, "task", None) or getattr(trainer.datamodule, "task", None)
    return get_task(task)


class LaMPPredictionWriter(BasePredictionWriter):
    """Writes predictions as ``{"task": "LaMP_<n>", "golds": [{"id", "output"}]}``, the official format.

    ``predict`` writes what ``predict_step`` returned, gathered from all ranks, each id once, in the
    dataset's order. ``test`` (and ``validate`` when asked) write the module's ``predictions``.
    """

    def __init__(self, path: str | None = None, on_test: bool = True, on_validate: bool = False,
                 overwrite: bool = True):
        """
        Args:
            path: output file; ``{stage}`` (predict, test or validate) and ``{task}`` (official task name)
                are filled in. Default: ``<log dir>/{task}-{stage}-predictions.json``.
            on_test: also write the predictions of ``test``.
            on_validate: also write the predictions of the ``validate`` command (never during fit).
            overwrite: replace an existing file (writes are atomic either way).
        """
        super().__init__(write_interval="epoch")
        self.path, self.on_test, self.on_validate, self.overwrite = path, on_test, on_validate, overwrite
        self.written: dict[str, Path] = {}  #: stage -> the file written last

    def target(self, trainer, pl_module, stage: str) -> Path:
        """The file this stage writes to (call on every rank: ``trainer.log_dir`` is collective)."""
        task = _task_of(trainer, pl_module).official_name
        template = self.path or str(Path(trainer.log_dir or ".") / "{task}-{stage}-predictions.json")
        return Path(template.format(stage=stage, task=task))

    def _write(self, trainer, pl_module, stage: str, preds: dict[str, str]) -> None:
        path = self.target(trainer, pl_module, stage)
        if trainer.is_global_zero:
            write_predictions(path, _task_of(trainer, pl_module), preds, overwrite=self.overwrite)
            log.info("wrote %d %s predictions to %s", len(preds), stage, path)
        self.written[stage] = path

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        per_loader = [predictions] if trainer.predict_loop.num_dataloaders == 1 else predictions
        rows = []  # (dataloader, dataset index or None, id, text)
        for d, outputs in enumerate(per_loader):
            indices = batch_indices[d] if d < len(batch_indices) else []
            for b, out in enumerate(outputs):
                idx = indices[b] if b < len(indices) and indices[b] else [None] * len(out)
                rows.extend((d, i, rid, text) for i, (rid, text) in zip(idx, out))
        per_rank = gather_objects(rows)
        if all(r[1] is not None for rank in per_rank for r in rank):
            ordered = sorted((r for rank in per_rank for r in rank), key=lambda r: (r[0], r[1]))
            preds: dict[str, str] = {}
            for _, _, rid, text in ordered:
                preds.setdefault(rid, text)  # DistributedSampler pads the last shard with repeats
        else:  # no sampler indices: ranks hold interleaved shards of the dataset
            preds = merge_rank_outputs([[(r[2], r[3]) for r in rank] for rank in per_rank])
        self._write(trainer, pl_module, "predict", preds)

    def on_test_end(self, trainer, pl_module) -> None:
        if self.on_test:
            self._write(trainer, pl_module, "test", pl_module.predictions)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.on_validate and trainer.state.fn == "validate":
            self._write(trainer, pl_module, "validate", pl_module.predictions)


class HFExport(Callback):
    """At the end of fit, saves the best checkpoint's model and tokenizer with ``save_pretrained``.

    The folder loads with ``AutoModelForSeq2SeqLM.from_pretrained`` (and serves as
    ``--model.model_name_or_path`` for zero-shot style evaluation). In the PPlug modes it also holds
    the user embedder (``persona_plug.safetensors``, ``user_encoder/``, ``persona_plug.json``;
    :func:`lamp_fid.pplug.load_persona_plug` reads them back, with the LM's input embeddings). Without a best checkpoint (no
    ``ModelCheckpoint`` or nothing monitored) the final weights are exported, with a warning. The folder
    appears whole or not at all; an earlier export is replaced, a folder of other files never.
    """

    def __init__(self, dirpath: str | None = None, dirname: str = "hf_best"):
        """
        Args:
            dirpath: export folder (default: ``<checkpoint dir>/<dirname>``, the run folder).
            dirname: name of the export folder inside the checkpoint dir when ``dirpath`` is not set.
        """
        self.dirpath, self.dirname = dirpath, dirname
        self.exported: Path | None = None

    def target(self, trainer) -> Path:
        """Where the export goes."""
        if self.dirpath:
            return Path(self.dirpath)
        ck = trainer.checkpoint_callback
        base = ck.dirpath if ck is not None and ck.dirpath else trainer.default_root_dir
        return Path(base) / self.dirname

    def on_fit_end(self, trainer, pl_module) -> None:
        target = self.target(trainer)
        ck = trainer.checkpoint_callback
        best = ck.best_model_path if ck is not None else ""
        # best_model_path comes from the resumed checkpoint: export only a file in this run's folder
        # (checked on every rank, so that all of them stop)
        if best and not (ck.dirpath and inside(best, ck.dirpath)):
            raise LaMPError(f"the best checkpoint {best} is not in the run's checkpoint folder "
                            f"{ck.dirpath}: not exported")
        check_folder_target(target, overwrite=True, what=EXPORT)
        if trainer.is_global_zero:
            self.export(pl_module, best, target)
        trainer.strategy.barrier()
        self.exported = target

    @staticmethod
    def export(pl_module, checkpoint: str, target: Path) -> None:
        """Save ``pl_module``'s model with ``checkpoint``'s weights (live ones if empty) to ``target``."""
        state_dict = None
        if checkpoint:
            # weights only: the run folder may be someone else's
            ckpt = load_weights(checkpoint, f"best checkpoint {checkpoint}")
            prefix = "model."
            state_dict = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        else:
            log.warning("no best checkpoint to export (no ModelCheckpoint with a monitor?): exporting the "
                        "final weights to %s", target)
        user = getattr(pl_module, "user", None)
        with atomic_folder(target, overwrite=True, what=EXPORT) as tmp:
            pl_module.model.save_pretrained(tmp, state_dict=state_dict)
            pl_module.tokenizer.save_pretrained(tmp)
            if user is not None:  # PPlug modes: the user embedder beside the LM (lamp_fid.pplug)
                from lamp_fid.pplug import save_persona_plug

                user_state = None if not checkpoint else \
                    {k[len("user."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("user.")}
                hp = pl_module.hparams
                save_persona_plug(user, tmp, user_state, {"mode": hp.get("mode"), "persona": hp.get("persona"),
                                                          "user_encoder": hp.get("user_encoder")})
        log.info("exported %s to %s", checkpoint or "the final weights", target)
