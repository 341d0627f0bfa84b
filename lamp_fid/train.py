"""Lightning CLI for ``lamp-fid fit|validate|test|predict``: run folders, checkpoints and links.

A run folder ``<runs_dir>/<run_name>/`` holds the best checkpoint by the task's official metric (in
the right direction), ``last.ckpt`` for resuming, the run's ``config.yaml``, an HF export of the best
model (``hf_best/``), and one log folder per command (``fit/version_N``, ``test/version_N``, ...)
with ``metrics.csv`` and predictions in the official LaMP format.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from jsonargparse import ArgumentError, Namespace
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from lamp_fid.callbacks import HFExport, LaMPPredictionWriter
from lamp_fid.ckpt_check import SPECIAL, check_checkpoint
from lamp_fid.data.module import LaMPDataModule
from lamp_fid.errors import LaMPError
from lamp_fid.io import atomic_write
from lamp_fid.model import FiDModule
from lamp_fid.resume import LastCheckpoint, RNGState
from lamp_fid.runfolder import RunFolderLock, with_atomic_checkpoints
from lamp_fid.setting import RunResults, RunSetting, write_results
from lamp_fid.tasks import get_task


class SaveRunConfig(SaveConfigCallback):
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
    with the run's setting (``lamp_fid.setting.write_results``). ``lamp-fid report`` and
    ``lamp-fid tune`` read these files.
    """

    def __init__(self, run_dir: str | Path, setting: RunSetting, run_name: str):
        self.run_dir, self.setting, self.run_name = Path(run_dir), setting, run_name
        self.best: dict | None = None

    def _metrics(self, trainer, prefix: str) -> dict[str, float]:
        return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}

    def _write(self, trainer, path: Path, stage: str, split: str, metrics: dict, **fit) -> None:
        if trainer.is_global_zero:
            write_results(path, RunResults(self.setting, self.run_name, stage, split, metrics, **fit))

    def on_validation_end(self, trainer, pl_module):
        if trainer.state.fn == "validate":
            self._write(trainer, Path(trainer.log_dir) / "results.json", "validate", self.setting.val_split,
                        self._metrics(trainer, "val/"))
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

    def on_fit_end(self, trainer, pl_module):
        if self.best is None:
            return
        ck = trainer.checkpoint_callback
        self._write(trainer, self.run_dir / "results.json", "fit", self.setting.val_split,
                    self.best["metrics"], monitor=ck.monitor, best_checkpoint=str(ck.best_model_path),
                    epoch=self.best["epoch"], step=self.best["step"])

    def on_test_end(self, trainer, pl_module):
        self._write(trainer, Path(trainer.log_dir) / "results.json", "test", self.setting.test_split,
                    self._metrics(trainer, "test/"))


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
        from lamp_fid.model import PAPER_OPTIMIZER, cli_default

        parser.add_argument("--run_name", type=str | None, default=None,
                            help="name of the run folder (default: <task>-<mode>-<retriever>-k<k>)")
        parser.add_argument("--runs_dir", type=Path, default=Path("checkpoints"),
                            help="folder that holds run folders")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="fit: allow starting a new run in a run folder that already has checkpoints")
        parser.add_argument("--last_every_n_steps", type=int | None, default=None,
                            help="fit: also write <run>/last.ckpt every this many optimizer steps (it is "
                                 "always written after every validation); a killed fit resumes from it")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": False,  # last.ckpt comes from LastCheckpoint (run_callbacks)
            "checkpoint.save_top_k": 1,
            "checkpoint.filename": "best-{epoch}-{step}",
            "model.optimizer": cli_default(PAPER_OPTIMIZER),  # FiDModule's default, as the CLI writes it
        })
        parser.link_arguments("data.task", "model.task")
        parser.link_arguments("model.model_name_or_path", "data.tokenizer")
        # PPlug: the model builds the user embedder for the data's mode and user encoder
        parser.link_arguments("data.mode", "model.mode")
        parser.link_arguments("data.user_encoder", "model.user_encoder")
        parser.link_arguments("data.user_pooling", "model.user_pooling")
        parser.link_arguments("model.query_instruction", "data.query_instruction")

    def _parse_ckpt_path(self) -> None:
        """Keep the command's options: Lightning would overwrite the model options with the checkpoint's
        hyperparameters, silently dropping those given on the command line. ``_check_ckpt`` compares
        them instead.

        A private method, overridden because Lightning 2.6 has no public hook for it (upstream proposes
        an ``adapt_checkpoint_hparams`` hook). tests/test_train_cli.py fails if Lightning stops calling
        it, and test_hostile_train checks that the command line wins.
        """

    def _check_ckpt(self, cfg, run_dir: Path) -> None:
        """Checkpoints load as weights only; refuse a ``--ckpt_path`` this command must not use.

        A resume (fit) keeps the run's data and model settings except ``FREE_DATA``/``FREE_MODEL`` of
        ``lamp_fid.ckpt_check`` (paths, workers, the eval batch size, the test/predict splits,
        gradient checkpointing, skipping empty passages); validate/test/predict need the checkpoint's
        task and base model. ``--ckpt_path last`` is ``<run>/last.ckpt``.
        """
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
        try:
            task = get_task(cfg.data.task)
        except ValueError as err:
            raise LaMPError(f"--data.task: {err}") from None
        self.setting = RunSetting.from_data(dict(cfg.data), model=cfg.model.model_name_or_path)
        self.run_name = cfg.run_name or self.setting.run_name()
        run_dir = self.run_dir = Path(cfg.runs_dir) / self.run_name
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
        self.lock = RunFolderLock(run_dir) if cmd == "fit" else None
        # Lightning appends trainer_defaults' callbacks after the "checkpoint" group's ModelCheckpoint,
        # which so stays `trainer.checkpoint_callback` (the best model for HFExport, tune, results)
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": self.run_callbacks(cfg)}
        self.save_config_kwargs = {**self.save_config_kwargs, "run_dir": str(run_dir)}

    def run_callbacks(self, cfg) -> list[Callback]:
        """The run folder's callbacks: ``last.ckpt``, budget fallback counts, ``results.json`` and the RNG
        states on every command (test/predict with a fit's checkpoint expect its callbacks); fit adds
        the HF export of the best model and the run folder's lock, the others write official-format
        predictions into the command's log folder."""
        callbacks = [LastCheckpoint(self.run_dir, cfg.get("last_every_n_steps")), FallbackReport(),
                     RunSummary(self.run_dir, self.setting, self.run_name), RNGState()]
        if self.lock is not None:
            callbacks += [HFExport(), self.lock]  # HFExport: <run>/hf_best
        else:
            callbacks.append(LaMPPredictionWriter(on_test=True, on_validate=True, overwrite=False))
        return callbacks

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The Trainer, writing checkpoints atomically unless the config names its own CheckpointIO."""
        plugins = self.config_init[self.subcommand].trainer.get("plugins")
        return super().instantiate_trainer(plugins=with_atomic_checkpoints(plugins), **kwargs)

    def after_instantiate_classes(self) -> None:
        """Fit: lock the run folder before anything is written into it (global rank 0 only: the ranks
        of one fit are one writer)."""
        if self.lock is None or not self.trainer.is_global_zero:
            return
        self.lock.acquire()
        cfg = self.config[self.subcommand]
        if not cfg.get("ckpt_path") and not cfg.overwrite and any(self.run_dir.glob("*.ckpt")):
            self.lock.release()
            raise LaMPError(f"{self.run_dir}: another fit wrote checkpoints there while this one "
                            "started; resume with --ckpt_path or pick another --run_name")


def _cli(cli_class: type[LaMPCLI], args: list[str], **parser_kwargs) -> LaMPCLI:
    # lamp-fid guards run folders itself (fit refuses a folder with checkpoints unless resuming or
    # --overwrite): the folder is never empty, since config.yaml is written before the first checkpoint
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    return cli_class(
        FiDModule,
        LaMPDataModule,
        # None when called from the console script: LightningCLI then reads sys.argv itself
        args=None if args == sys.argv[1:] else args,
        auto_configure_optimizers=False,
        save_config_callback=SaveRunConfig,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "lamp-fid", **parser_kwargs},
    )


def lightning_main(args: list[str]) -> LaMPCLI:
    """Run ``fit|validate|test|predict`` through LaMPCLI (``args`` starts with the subcommand)."""
    return _cli(LaMPCLI, args)


class _Parsed(Exception):
    """Carries a parsed config out of LightningCLI's constructor before anything is built."""


class _ParseOnly(LaMPCLI):
    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        raise _Parsed(self.config)


def fit_config(args: list[str]) -> Namespace:
    """The config ``lamp-fid fit <args>`` runs with, resolved by LaMPCLI's own parser (config files,
    overrides, defaults, links and type checks) without building, seeding or writing anything.

    A config or option the parser rejects is one ``LaMPError`` line (the parser's own message).
    """
    try:
        _cli(_ParseOnly, ["fit", *args], exit_on_error=False)
    except _Parsed as parsed:
        return parsed.args[0]["fit"]
    except ArgumentError as err:
        raise LaMPError(" ".join(line.strip() for line in str(err).splitlines() if line.strip())) from None
    raise AssertionError("LaMPCLI ran past parse_arguments")  # pragma: no cover
