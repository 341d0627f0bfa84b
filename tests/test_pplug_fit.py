"""PPlug as a mode of the trainer: pplug, pplug+ipa and pplug+fid through `lamp-fid fit|test|predict`,
the frozen LM, the batch contract, the HF export, resume, the configs and hostile options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lamp_fid.cli import main
from lamp_fid.data.fake import write_fake_split
from lamp_fid.data.module import LaMPDataModule
from lamp_fid.model import FiDModule
from lamp_fid.setting import RunSetting, is_baseline, passages_are_bare, split_mode
from test_pplug import build_tiny_bert
from tiny import build_tiny_t5

T5_DIR = Path(__file__).resolve().parents[2] / "shared/assets/flan-t5-small"


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pplug")
    data = root / "data"
    for split, n in (("train", 12), ("dev", 6), ("test", 5)):
        # profile_size from 0: some users have no history (PersonaPlug's Proj(0) path)
        write_fake_split(data, "LaMP_3", split, n, profile_size=(0, 5), words=(5, 12), seed=1)
    return root, data, build_tiny_t5(root / "tiny"), build_tiny_bert(root / "bert")


def common(root, data, model, bert, *extra):
    return [
        "--data.task", "LaMP_3", "--data.data_dir", str(data), "--data.cache_dir", str(root / "cache"),
        "--data.download", "false", "--data.batch_size", "4", "--data.max_length", "64",
        "--data.user_encoder", str(bert), "--model.model_name_or_path", str(model), "--model.num_beams", "1",
        "--model.max_new_tokens", "4", "--runs_dir", str(root / "runs"),
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1", *extra,
    ]


# --- the setting ----------------------------------------------------------------------------------

def test_modes_split_and_name_runs():
    assert split_mode("pplug") == ("none", True) and split_mode("pplug+fid") == ("fid", True)
    assert split_mode("pplug+ipa") == ("ipa", True) and split_mode("fid") == ("fid", False)
    assert split_mode("none") == ("none", False)
    assert not is_baseline("pplug", "none", 0) and passages_are_bare("pplug", "bm25", 4)
    assert RunSetting("LaMP_3", "pplug", "bm25", 4).run_name() == "LaMP_3-pplug"
    assert RunSetting("LaMP_3", "pplug", "none", 0, time_split=True).run_name() == "LaMP_3-pplug-time"
    assert RunSetting("LaMP_3", "pplug+fid", "bm25", 4).run_name() == "LaMP_3-pplug+fid-bm25-k4"
    # pplug+fid without retrieved items is PPlug alone, never the baseline
    s = RunSetting("LaMP_3", "pplug+fid", "none", 4)
    assert (s.mode, s.retriever, s.k, s.is_baseline) == ("pplug", "none", 0, False)


# --- through the CLI ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, extra, run", [
    ("pplug", [], "LaMP_3-pplug"),
    ("pplug+ipa", ["--data.k", "2"], "LaMP_3-pplug+ipa-bm25-k2"),
    ("pplug+fid", ["--data.k", "2", "--data.history_dropout", "0.5"], "LaMP_3-pplug+fid-bm25-k2"),
])
def test_each_pplug_mode_fits_tests_and_predicts_through_the_cli(setup_dir, mode, extra, run):
    root, data, model, bert = setup_dir
    main(["fit", *common(root, data, model, bert, "--data.mode", mode, *extra, "--trainer.max_epochs", "1")])
    folder = root / "runs" / run
    summary = json.loads((folder / "results.json").read_text())
    assert summary["mode"] == mode and "val/MAE" in summary["metrics"]
    state = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("user.proj.") for k in state) and any(k.startswith("user.encoder.") for k in state)
    main(["test", "--config", str(folder / "config.yaml"), "--ckpt_path", summary["best_checkpoint"]])
    main(["predict", "--config", str(folder / "config.yaml"), "--ckpt_path", summary["best_checkpoint"]])
    (preds,) = folder.glob("predict/version_*/*.json")
    written = json.loads(preds.read_text())
    test_ids = [q["id"] for q in json.loads((data / "LaMP_3" / "test" / "test_questions.json").read_text())]
    assert written["task"] == "LaMP_3" and [g["id"] for g in written["golds"]] == test_ids
    tested = json.loads(next(folder.glob("test/version_*/results.json")).read_text())["metrics"]
    assert tested["test/MAE"] == pytest.approx(summary["metrics"]["val/MAE"], abs=1e-12)
