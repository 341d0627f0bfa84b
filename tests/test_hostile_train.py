"""Hostile input on the training side: checkpoints and options that `lamp-fid fit|validate|test|predict`
must refuse with one line (never run code from a checkpoint, never relabel or silently change a run)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lamp_fid.callbacks import HFExport
from lamp_fid.cli import main
from lamp_fid.data.fake import write_fake_split
from lamp_fid.errors import LaMPError
from tiny import build_tiny_t5

class Evil:
    """Unpickling this creates ``marker``: what a checkpoint loaded without weights_only can do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_evil(path: Path, marker: Path) -> Path:
    """A checkpoint-shaped pickle whose loading (without weights_only) creates ``marker``."""
    torch.save({"state_dict": {}, "hyper_parameters": {"task": "LaMP_3"}, "x": Evil(marker)}, path)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Fake LaMP_3 and LaMP_2 data, a tiny T5 and one finished 1-epoch LaMP_3 run (fid, bm25, k=4)."""
    root = tmp_path_factory.mktemp("hostile")
    for task in ("LaMP_3", "LaMP_2"):
        for split, n in (("train", 8), ("dev", 4), ("test", 3)):
            write_fake_split(root / "data", task, split, n, profile_size=(1, 5), words=(5, 12), seed=1)
    model = build_tiny_t5(root / "tiny")
    ns = SimpleNamespace(root=root, data=root / "data", model=model, runs=root / "runs")
    main(["fit", *common(ns, "--data.task", "LaMP_3", "--data.k", "4"), "--trainer.max_epochs", "1"])
    ns.run = ns.runs / "LaMP_3-fid-bm25-k4"
    assert (ns.run / "last.ckpt").exists() and (ns.run / "results.json").exists()
    return ns


def common(env, *extra, data=None) -> list[str]:
    return [
        "--data.data_dir", str(data or env.data), "--data.cache_dir", str(env.root / "cache"),
        "--data.download", "false", "--data.batch_size", "4", "--data.max_length", "48",
        "--model.model_name_or_path", str(env.model), "--model.num_beams", "1",
        "--model.max_new_tokens", "3", "--runs_dir", str(env.runs), "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1", *extra,
    ]


def refused(capsys, args: list[str]) -> str:
    """Run ``lamp-fid <args>``; assert one error line and exit 1; return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"lamp-fid {args[0]}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def relocate(src: Path, dst: Path) -> Path:
    """Copy run folder ``src`` to ``dst`` with its last.ckpt's checkpoint state pointing into ``dst``."""
    shutil.copytree(src, dst)
    ckpt = torch.load(dst / "last.ckpt", map_location="cpu", weights_only=True)
    for state in ckpt["callbacks"].values():
        if "dirpath" in state:
            state["dirpath"] = str(dst)
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if state[key]:
                    state[key] = str(dst / Path(state[key]).name)
            state["best_k_models"] = {str(dst / Path(p).name): v for p, v in state["best_k_models"].items()}
    torch.save(ckpt, dst / "last.ckpt")
    return dst


def point_best_at(run: Path, target: Path) -> None:
    """Make the monitored ModelCheckpoint state of ``run``'s last.ckpt name ``target`` as the best."""
    ckpt = torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)
    for key, state in ckpt["callbacks"].items():
        if "val/MAE" in key:
            state["best_model_path"] = state["kth_best_model_path"] = str(target)
            state["best_k_models"] = {str(target): state["best_model_score"]}
    torch.save(ckpt, run / "last.ckpt")


# --- 1. code execution ------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["inside", "outside"])
def test_a_resumed_run_never_unpickles_the_best_checkpoint_its_state_names(env, tmp_path, capsys, where):
    """A received run folder whose last.ckpt names a pickle as the best checkpoint: the export at the end
    of the resumed fit must not run it (it used torch.load(weights_only=False))."""
    run = relocate(env.run, env.runs / f"received-{where}")
    marker = tmp_path / "MARKER"
    evil = (run if where == "inside" else tmp_path) / "best-epoch=0-step=2.ckpt"
    write_evil(evil, marker)
    point_best_at(run, evil)
    line = refused(capsys, ["fit", *common(env, "--data.task", "LaMP_3", "--data.k", "4"),
                            "--trainer.max_epochs", "1", "--run_name", run.name,
                            "--ckpt_path", str(run / "last.ckpt")])
    assert not marker.exists()
    if where == "inside":
        assert "refused: it holds Python objects besides weights" in line and str(evil) in line
    else:
        assert f"names {evil}, outside the run folder" in line


def test_hf_export_refuses_a_best_checkpoint_outside_the_run_folder(env, tmp_path):
    marker = tmp_path / "MARKER"
    evil = write_evil(tmp_path / "best.ckpt", marker)
    ck = SimpleNamespace(best_model_path=str(evil), dirpath=str(tmp_path / "run"))
    trainer = SimpleNamespace(checkpoint_callback=ck, is_global_zero=True, default_root_dir=str(tmp_path),
                              strategy=SimpleNamespace(barrier=lambda: None))
    with pytest.raises(LaMPError, match="not in the run's checkpoint folder"):
        HFExport().on_fit_end(trainer, None)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["fit", "test"])
def test_a_pickle_as_ckpt_path_is_refused_and_never_run(env, tmp_path, capsys, monkeypatch, command):
    # even where the user's environment turns torch's weights-only default off
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "MARKER"
    evil = write_evil(tmp_path / "evil.ckpt", marker)
    line = refused(capsys, [command, *common(env, "--data.task", "LaMP_3", "--data.k", "4"),
                            "--run_name", "evil", "--trainer.max_epochs", "1", "--ckpt_path", str(evil)])
    assert "refused: it holds Python objects besides weights" in line
    assert not marker.exists()


def test_lightning_loads_the_checkpoint_as_weights_only(env, monkeypatch, capsys):
    from lightning.pytorch.strategies import Strategy

    seen = []
    original = Strategy.load_checkpoint

    def spy(self, checkpoint_path, weights_only=None):
        seen.append(weights_only)
        return original(self, checkpoint_path, weights_only=weights_only)

    monkeypatch.setattr(Strategy, "load_checkpoint", spy)
    main(["validate", "--config", str(env.run / "config.yaml"), "--ckpt_path", str(env.run / "last.ckpt")])
    assert seen == [True]
    line = refused(capsys, ["validate", "--config", str(env.run / "config.yaml"),
                            "--ckpt_path", str(env.run / "last.ckpt"), "--weights_only", "false"])
    assert "--weights_only false" in line


# --- 2. a resume with other settings -----------------------------------------------------------
@pytest.mark.parametrize("change, shown", [
    (["--data.k", "1", "--data.retriever", "random"],
     ["--data.retriever: bm25 -> random", "--data.k: 4 -> 1"]),
    (["--data.k", "4", "--data.batch_size", "2"], ["--data.batch_size: 4 -> 2"]),
    (["--data.k", "4", "--model.num_beams", "2"], ["--model.num_beams: 1 -> 2"]),
])
def test_a_resume_with_changed_settings_is_refused_and_nothing_is_relabeled(env, capsys, change, shown):
    before = (env.run / "results.json").read_bytes()
    args = common(env, "--data.task", "LaMP_3", *change)
    line = refused(capsys, ["fit", *args, "--trainer.max_epochs", "2", "--run_name", env.run.name,
                            "--ckpt_path", str(env.run / "last.ckpt")])
    assert "this resume changes the run's settings" in line
    assert all(s in line for s in shown), line
    assert (env.run / "results.json").read_bytes() == before


def test_a_resume_may_change_paths_workers_and_eval_batch_size(env, tmp_path):
    data = tmp_path / "moved-data"
    shutil.copytree(env.data, data)
    args = common(env, "--data.task", "LaMP_3", "--data.k", "4", "--data.num_workers", "0",
                  "--data.eval_batch_size", "2", "--model.gradient_checkpointing", "true", data=data)
    main(["fit", *args, "--trainer.max_epochs", "1", "--ckpt_path", "last"])  # = <run>/last.ckpt
    summary = json.loads((env.run / "results.json").read_text())
    assert (summary["task"], summary["retriever"], summary["k"]) == ("LaMP_3", "bm25", 4)


# --- 3. a checkpoint of another task -----------------------------------------------------------
@pytest.mark.parametrize("command", ["test", "predict", "fit"])
def test_a_checkpoint_of_another_task_is_refused(env, capsys, command):
    line = refused(capsys, [command, *common(env, "--data.task", "LaMP_2", "--data.k", "4"),
                            "--run_name", env.run.name, "--trainer.max_epochs", "1",
                            "--ckpt_path", str(env.run / "last.ckpt")])
    assert "--data.task: LaMP_3 -> LaMP_2" in line


def test_evaluation_may_change_decoding_but_keeps_the_command_line_options(env):
    """Lightning replaced the model options with the checkpoint's (num_beams 2 on the command line,
    1 used); decoding options may differ from training, and the command line now wins."""
    from lamp_fid.train import lightning_main

    cli = lightning_main(["validate", "--config", str(env.run / "config.yaml"), "--ckpt_path",
                          str(env.run / "last.ckpt"), "--model.num_beams", "2"])
    assert cli.model.hparams.num_beams == 2


# --- 4. a missing or damaged --ckpt_path -------------------------------------------------------
@pytest.mark.parametrize("kind, message, command", [
    ("missing", "no such file", "fit"), ("missing", "no such file", "test"),
    ("folder", "not a file", "validate"), ("truncated", "not a PyTorch checkpoint", "fit"),
    ("truncated", "not a PyTorch checkpoint", "test"), ("text", "not a PyTorch checkpoint", "predict"),
    ("no-hparams", "not a lamp-fid checkpoint", "test"), ("best", "name a checkpoint file", "test"),
])
def test_a_missing_or_damaged_ckpt_path_is_one_line(env, tmp_path, capsys, kind, message, command):
    path = tmp_path / "x.ckpt"
    if kind == "folder":
        path.mkdir()
    elif kind == "truncated":
        path.write_bytes((env.run / "last.ckpt").read_bytes()[:5000])
    elif kind == "text":
        path.write_text("not a checkpoint")
    elif kind == "no-hparams":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    elif kind == "best":
        path = "best"
    line = refused(capsys, [command, *common(env, "--data.task", "LaMP_3", "--data.k", "4"),
                            "--run_name", "damaged", "--ckpt_path", str(path)])
    assert f"--ckpt_path {path}: {message}" in line


# --- 5. options out of range ------------------------------------------------------------------
@pytest.mark.parametrize("option, value, message", [
    ("--data.batch_size", "0", "batch_size must be >= 1, got 0"),
    ("--data.eval_batch_size", "0", "eval_batch_size must be >= 1"),
    ("--data.task", "LaMP_9", "--data.task: unknown LaMP task 'LaMP_9'"),
])
def test_an_option_out_of_range_is_one_line_naming_it(env, capsys, option, value, message):
    args = common(env, "--data.task", "LaMP_3", "--data.k", "1", option, value)
    line = refused(capsys, ["fit", *args, "--run_name", "range", "--overwrite", "true",
                            "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1"])
    assert message in line


@pytest.mark.parametrize("options, message", [
    ({"batch_size": -2}, "batch_size must be >= 1, got -2"),
    ({"eval_batch_size": -1}, "eval_batch_size must be >= 1"),
    ({"max_length": 0}, "max_length must be >= 1, got 0"),
    ({"max_length": -5}, "max_length must be >= 1, got -5"),
    ({"max_target_length": 0}, "max_target_length must be >= 1, got 0"),
    ({"num_workers": -1}, "num_workers must be >= 0, got -1"),
    ({"task": "LaMP_9"}, "task: unknown LaMP task 'LaMP_9'"),
])
def test_data_options_out_of_range_are_refused(options, message):
    from lamp_fid.data.module import LaMPDataModule

    with pytest.raises(LaMPError, match=message):
        LaMPDataModule(**{"task": "LaMP_3", **options})


@pytest.mark.parametrize("options, message", [
    ({"num_beams": 0}, "num_beams must be >= 1, got 0"),
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1, got 0"),
    ({"task": "LaMP_9"}, "task: unknown LaMP task 'LaMP_9'"),
])
def test_model_options_out_of_range_are_refused(env, options, message):
    from lamp_fid.model import FiDModule

    with pytest.raises(LaMPError, match=message):
        FiDModule(**{"task": "LaMP_3", "model_name_or_path": str(env.model), **options})


def test_an_empty_train_split_is_one_line(env, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(env.data / "LaMP_3", data / "LaMP_3")
    (data / "LaMP_3" / "train" / "train_questions.json").write_text("[]")
    (data / "LaMP_3" / "train" / "train_outputs.json").write_text('{"task": "LaMP_3", "golds": []}')
    line = refused(capsys, ["fit", *common(env, "--data.task", "LaMP_3", data=data),
                            "--run_name", "empty", "--trainer.max_epochs", "1"])
    assert "train_questions.json: the train split is empty" in line


# --- 6. a missing outputs file ----------------------------------------------------------------
def test_a_missing_outputs_file_is_refused_at_setup_and_predict_still_works(env, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(env.data / "LaMP_3", data / "LaMP_3")
    (data / "LaMP_3" / "dev" / "dev_outputs.json").unlink()
    args = common(env, "--data.task", "LaMP_3", "--run_name", "unlabeled", "--trainer.max_epochs", "1",
                  data=data)
    for command in ("fit", "validate", "test"):  # test_split defaults to dev
        line = refused(capsys, [command, *args])
        assert "dev_outputs.json: no such file, and" in line and f"{command} needs" in line
    assert not list((env.runs / "unlabeled").glob("*.ckpt"))
    main(["predict", *args])  # the LaMP test split has no outputs file, and predict needs none
    assert list((env.runs / "unlabeled" / "predict").glob("version_*/LaMP_3-predict-predictions.json"))


def test_testing_on_the_unlabeled_lamp_test_split_is_refused(env, capsys):
    line = refused(capsys, ["test", *common(env, "--data.task", "LaMP_3", "--data.test_split", "test"),
                            "--run_name", "unlabeled-test"])
    assert "the LaMP test split has no gold outputs" in line and "--data.test_split" in line


def test_a_missing_outputs_file_is_downloaded_when_download_is_on(env, tmp_path, monkeypatch):
    import lamp_fid.data.download as dl
    from lamp_fid.data.module import LaMPDataModule

    data = tmp_path / "data"
    shutil.copytree(env.data / "LaMP_3", data / "LaMP_3")
    outputs = data / "LaMP_3" / "dev" / "dev_outputs.json"
    outputs.unlink()
    calls = []

    def fake_download(task, split, time_split=False, data_dir=None):
        calls.append((task, split))
        shutil.copy(env.data / "LaMP_3" / "dev" / "dev_outputs.json", outputs)

    monkeypatch.setattr(dl, "download", fake_download)
    dm = LaMPDataModule(task="LaMP_3", data_dir=data, cache_dir=env.root / "cache", k=1,
                        tokenizer=str(env.model))
    dm.trainer = SimpleNamespace(state=SimpleNamespace(fn=SimpleNamespace(value="validate")))
    dm.prepare_data()
    assert calls == [("LaMP_3", "dev")] and outputs.exists()


# --- 7. config.yaml through a unique temp file ------------------------------------------------
def test_run_config_leaves_no_temp_file_when_the_write_fails(tmp_path, monkeypatch):
    from jsonargparse import ArgumentParser

    from lamp_fid.train import SaveRunConfig

    parser = ArgumentParser()
    parser.add_argument("--k", type=int, default=4)
    run = tmp_path / "run"
    callback = SaveRunConfig(parser, parser.parse_args([]), run_dir=str(run))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # the disk fills while the config is written
    with pytest.raises(LaMPError, match="cannot write .*config.yaml: No space left on device"):
        callback.save_config(SimpleNamespace(is_global_zero=True), None, "fit")
    assert sorted(p.name for p in run.iterdir()) == []
    monkeypatch.undo()
    callback.save_config(SimpleNamespace(is_global_zero=True), None, "fit")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    assert "k: 4" in (run / "config.yaml").read_text()
