"""Lightning CLI for ``lamp-fid fit|validate|test|predict``: run folders, checkpoints and links.

A run folder ``<runs_dir>/<run_name>/`` holds the best checkpoint by the task's official metric (in
the right direction), ``last.ckpt`` for resuming, the run's ``config.yaml``, an HF export of the best
model (``hf_best/``), and one log folder per command (``fit/version_N``, ``test/version_N``, ...)
with ``metrics.csv`` and predictions in the official LaMP format.
"""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from lamp_fid.errors import LaMPError
from lamp_fid.predictions import atomic_write
from lamp_fid.tasks import get_task



def default_run_name(data: dict) -> str:
    """``LaMP_3-fid-bm25-k4`` (``-time`` for the time split; ``LaMP_3-none`` for the baseline)."""
    task = get_task(data["task"]).name
    if data.get("mode") == "none" or data.get("retriever") == "none":
        name = f"{task}-none"
    else:
        layout = "" if data.get("layout", "official") == "official" else f"-{data['layout']}"
        name = f"{task}-{data['mode']}{layout}-{data['retriever']}-k{data['k']}"
    return name + ("-time" if data.get("time_split") else "")


class RunConfig(SaveConfigCallback):
    """Saves the resolved config in the command's log folder and, for a new fit, as ``<run>/config.yaml``.

    ``lamp-fid test --config <run>/config.yaml --ckpt_path <run>/last.ckpt`` then restores every
    setting, linked ones included (a checkpoint alone does not restore links such as data.k).
    """

    def __init__(self, *args, run_dir: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_dir = run_dir

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if trainer.is_global_zero and self.run_dir and stage == "fit":
            target = Path(self.run_dir) / "config.yaml"
            if not target.exists():  # a unique temp file in the run folder, removed on failure
                text = self.parser.dump(self.config, skip_none=False)
                atomic_write(target, text)  # a full disk or a read-only folder: one LaMPError line


class FallbackReport(Callback):
    """Counts the official prompt builder's budget fallbacks (retries with a smaller factor) per stage."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def _add(self, stage: str, batch) -> None:
        if isinstance(batch, dict):
            n, r = self.counts.get(stage, (0, 0))
            self.counts[stage] = (n + int(batch.get("fallbacks", 0)), r + int(batch.get("retries", 0)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._add("train", batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._add("val", batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._add("test", batch)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._add("predict", batch)

    @rank_zero_only
    def _report(self, stage: str) -> None:
        n, r = self.counts.pop(stage, (0, 0))
        if n or r:
            rank_zero_warn(f"{stage}: the official prompt budget retried {r} time(s) with a smaller "
                           f"factor and fell back to the bare input for {n} passage(s)")

    def on_train_epoch_end(self, trainer, pl_module):
        self._report("train")

    def on_validation_epoch_end(self, trainer, pl_module):
        self._report("val")

    def on_test_epoch_end(self, trainer, pl_module):
        self._report("test")

    def on_predict_epoch_end(self, trainer, pl_module):
        self._report("predict")


class RunSummary(Callback):
    """Writes ``<run>/results.json`` after fit and ``<log dir>/results.json`` after test/validate.

    Fit: the validation metrics of the epoch whose monitored metric was best (the best checkpoint's),
    with the run's setting (task, mode, retriever, k, layout, split). ``lamp-fid report`` and
    ``lamp-fid tune`` read these files.
    """

    def __init__(self, run_dir: str, setting: dict):
        self.run_dir, self.setting = Path(run_dir), setting
        self.best: dict | None = None

    def _metrics(self, trainer, prefix: str) -> dict[str, float]:
        return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}

    def on_validation_end(self, trainer, pl_module):
        if trainer.state.fn == "validate":
            self._write(trainer, Path(trainer.log_dir) / "results.json", {
                "stage": "validate", "split": self.setting.get("val_split"),
                "metrics": self._metrics(trainer, "val/")})
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        ck = trainer.checkpoint_callback
        metrics = self._metrics(trainer, "val/")
        monitor = getattr(ck, "monitor", None)
        if monitor not in metrics:
            return
        better = (self.best is None or
                  (metrics[monitor] > self.best["metrics"][monitor] if ck.mode == "max"
                   else metrics[monitor] < self.best["metrics"][monitor]))
        if better:
            self.best = {"metrics": metrics, "epoch": trainer.current_epoch, "step": trainer.global_step}

    def state_dict(self) -> dict:
        return {"best": self.best}  # so a resumed fit still knows the best epoch before the restart

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best")

    def _write(self, trainer, path: Path, payload: dict) -> None:
        if trainer.is_global_zero:
            atomic_write(path, json.dumps({**self.setting, **payload}, indent=2, sort_keys=True) + "\n",
                         overwrite=True)

    def on_fit_end(self, trainer, pl_module):
        if self.best is None:
            return
        ck = trainer.checkpoint_callback
        self._write(trainer, self.run_dir / "results.json", {
            "stage": "fit", "split": self.setting.get("val_split"), "monitor": ck.monitor,
            "best_checkpoint": str(ck.best_model_path), **self.best})

    def on_test_end(self, trainer, pl_module):
        self._write(trainer, Path(trainer.log_dir) / "results.json", {
            "stage": "test", "split": self.setting.get("test_split"),
            "metrics": self._metrics(trainer, "test/")})


def last_checkpoint(run_dir: Path, every_n_steps: int | None = None) -> ModelCheckpoint:
    """``<run>/last.ckpt`` for resuming: after every validation and every ``every_n_steps`` steps."""
    from lamp_fid.resume import LastCheckpoint

    return LastCheckpoint(run_dir, every_n_steps)


def _is_run_logger(logger, run_dir: Path) -> bool:
    """True for the CSVLogger that lamp-fid puts in a run folder (saved in config.yaml by fit): a later
    test/predict with that config logs under its own command name instead of ``fit``."""
    get = logger.get if hasattr(logger, "get") else (lambda key, default=None: default)
    init = get("init_args") or {}
    save_dir = init.get("save_dir") if hasattr(init, "get") else None
    return str(get("class_path", "")).endswith("CSVLogger") and save_dir == str(run_dir)


class LaMPCLI(LightningCLI):
    """LightningCLI with LaMP run folders, task-aware checkpointing and linked model/data options."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="name of the run folder (default: <task>-<mode>-<retriever>-k<k>)")
        parser.add_argument("--runs_dir", type=Path, default=Path("checkpoints"),
                            help="folder that holds run folders")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="fit: allow starting a new run in a run folder that already has checkpoints")
        parser.add_argument("--last_every_n_steps", type=int | None, default=None,
                            help="fit: also write <run>/last.ckpt every this many optimizer steps (it is "
                                 "always written after every validation); a killed fit resumes from it")
        parser.add_argument("--demo_data", type=Path | None, default=None,
                            help="offline demo: generate the demo's data, tokenizer and tiny T5 into this "
                                 "folder first, unless already there (configs/demo*.yaml set it)")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": False,  # last.ckpt comes from last_checkpoint() below
            "checkpoint.save_top_k": 1,
            "checkpoint.filename": "best-{epoch}-{step}",
        })
        parser.link_arguments("data.task", "model.task")
        parser.link_arguments("model.model_name_or_path", "data.tokenizer")

    def _parse_ckpt_path(self) -> None:
        """Keep the command's options: Lightning would overwrite the model options with the checkpoint's
        hyperparameters, silently dropping those given on the command line. ``_check_ckpt`` compares
        them instead."""

    def _check_ckpt(self, cfg, run_dir: Path) -> None:
        """Checkpoints load as weights only; refuse a ``--ckpt_path`` this command must not use.

        A resume (fit) keeps the run's data and model settings except ``FREE_DATA``/``FREE_MODEL`` of
        ``lamp_fid.ckpt_check`` (paths, workers, the eval batch size, the test/predict splits,
        gradient checkpointing, skipping empty passages); validate/test/predict need the checkpoint's
        task and base model. ``--ckpt_path last`` is ``<run>/last.ckpt``.
        """
        from lamp_fid.ckpt_check import SPECIAL, check_checkpoint

        if cfg.get("weights_only") is False:
            raise LaMPError("--weights_only false: lamp-fid only loads checkpoints as weights")
        if "weights_only" in cfg:
            cfg.weights_only = True  # Lightning's own load, too
        path = cfg.get("ckpt_path")
        if not path:
            return
        if path == "last":
            path = cfg.ckpt_path = str(run_dir / "last.ckpt")
        elif path in SPECIAL:
            raise LaMPError(f"--ckpt_path {path}: name a checkpoint file, e.g. {run_dir}/last.ckpt")
        folders = [run_dir] + ([Path(cfg.checkpoint.dirpath)] if cfg.checkpoint.get("dirpath") else [])
        check_checkpoint(path, self.subcommand, dict(cfg.data), dict(cfg.model), folders)

    def before_instantiate_classes(self) -> None:
        cmd = self.subcommand
        cfg = self.config[cmd]
        if cfg.get("demo_data"):
            from lamp_fid.data.demo import demo_data

            demo_data(Path(cfg.demo_data))  # every demo task: one tokenizer and model for all
        try:
            task = get_task(cfg.data.task)
        except ValueError as err:
            raise LaMPError(f"--data.task: {err}") from None
        run_name = cfg.run_name or default_run_name(dict(cfg.data))
        run_dir = Path(cfg.runs_dir) / run_name
        self.run_dir = run_dir
        self._check_ckpt(cfg, run_dir)
        if cmd == "fit" and not cfg.get("ckpt_path") and not cfg.overwrite and any(run_dir.glob("*.ckpt")):
            raise LaMPError(f"{run_dir} already holds checkpoints: resume with --ckpt_path "
                            f"{run_dir}/last.ckpt, pick another --run_name, or pass --overwrite true")
        ck = cfg.checkpoint
        ck.dirpath = ck.dirpath or str(run_dir)
        ck.monitor = ck.monitor or f"val/{task.monitor}"
        if ck.monitor == f"val/{task.monitor}":
            ck.mode = task.monitor_mode
        tr = cfg.trainer
        tr.default_root_dir = tr.default_root_dir or str(run_dir)
        if tr.logger in (None, True) or _is_run_logger(tr.logger, run_dir):
            tr.logger = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                         "init_args": {"save_dir": str(run_dir), "name": cmd}}
        d = cfg.data
        self.setting = {"task": task.name, "mode": d.mode, "retriever": "none" if d.mode == "none"
                        else d.retriever, "k": 0 if d.mode == "none" else d.k, "layout": d.layout,
                        "time_split": d.time_split, "val_split": d.val_split, "test_split": d.test_split,
                        "run_name": run_name, "model": cfg.model.model_name_or_path}
        if self.save_config_kwargs is not False:
            self.save_config_kwargs = {**(self.save_config_kwargs or {}), "run_dir": str(run_dir)}

    def _instantiate_trainer(self, config: dict, callbacks: list) -> object:
        from lamp_fid.callbacks import HFExport, LaMPPredictionWriter
        from lamp_fid.resume import RNGState
        from lamp_fid.runfolder import RunFolderLock, with_atomic_checkpoints

        cfg = self.config[self.subcommand]
        # after the "checkpoint" group (added by LightningCLI in `callbacks`), so that the monitored
        # checkpoint stays `trainer.checkpoint_callback` (the best model for HFExport, tune, results)
        # (RNGState on every command: test/predict with a fit's checkpoint expect its callbacks)
        extra = [last_checkpoint(self.run_dir, cfg.get("last_every_n_steps")), FallbackReport(),
                 RunSummary(str(self.run_dir), self.setting), RNGState()]
        lock = None
        if self.subcommand == "fit":
            lock = RunFolderLock(self.run_dir)
            extra += [HFExport(), lock]  # HFExport: <run>/hf_best
        else:  # official-format predictions in the command's log folder
            extra.append(LaMPPredictionWriter(on_test=True, on_validate=True, overwrite=False))
        config = {**config, "plugins": with_atomic_checkpoints(config.get("plugins"))}
        trainer = super()._instantiate_trainer(config, list(callbacks) + extra)
        if lock is not None and trainer.is_global_zero:  # the ranks of one fit are one writer
            lock.acquire()  # before anything is written into the run folder
            if not cfg.get("ckpt_path") and not cfg.overwrite and any(self.run_dir.glob("*.ckpt")):
                lock.release()
                raise LaMPError(f"{self.run_dir}: another fit wrote checkpoints there while this one "
                                "started; resume with --ckpt_path or pick another --run_name")
        return trainer


def lightning_main(args: list[str]) -> LaMPCLI:
    """Run ``fit|validate|test|predict`` through LaMPCLI (``args`` starts with the subcommand)."""
    from lamp_fid.data.module import LaMPDataModule
    from lamp_fid.model import FiDModule

    import sys
    import warnings

    # lamp-fid guards run folders itself (fit refuses a folder with checkpoints unless resuming or
    # --overwrite): the folder is never empty, since config.yaml is written before the first checkpoint
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    return LaMPCLI(
        FiDModule,
        LaMPDataModule,
        # None when called from the console script: LightningCLI then reads sys.argv itself
        args=None if args == sys.argv[1:] else args,
        auto_configure_optimizers=False,
        save_config_callback=RunConfig,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "lamp-fid"},
    )
