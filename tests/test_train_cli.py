"""End to end through `lamp-fid fit|validate|test|predict` on fake LaMP files with a tiny local T5."""

import inspect
import json

import pytest
import yaml
from lightning.pytorch.cli import LightningCLI

from lamp_fid import paper
from lamp_fid.cli import main
from lamp_fid.paper import CONFIGS_DIR
from lamp_fid.train import LaMPCLI
from tests.tiny import build_tiny_t5, write_lamp3_splits

CONFIGS = sorted(p for p in CONFIGS_DIR.glob("*_lamp*.yaml") if not p.name.startswith("demo"))
DEMO_CONFIGS = sorted(CONFIGS_DIR.glob("demo_lamp*.yaml"))


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = write_lamp3_splits(root / "data")
    model = build_tiny_t5(root / "tiny")
    return root, data, model


def common(root, data, model, *extra):
    return [
        "--data.task", "LaMP_3", "--data.data_dir", str(data), "--data.cache_dir", str(root / "cache"),
        "--data.download", "false", "--data.batch_size", "4", "--data.max_length", "64",
        "--model.model_name_or_path", str(model), "--model.num_beams", "1",
        "--model.max_new_tokens", "4", "--runs_dir", str(root / "runs"),
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1", *extra,
    ]


def test_fit_makes_a_run_folder_then_test_and_predict_from_it(setup_dir, capsys):
    root, data, model = setup_dir
    args = common(root, data, model, "--data.mode", "fid", "--data.k", "3", "--trainer.max_epochs", "2")
    main(["fit", *args])
    run = root / "runs" / "LaMP_3-fid-bm25-k3"
    assert (run / "config.yaml").exists() and (run / "last.ckpt").exists()
    best = sorted(run.glob("best-*.ckpt"))
    assert len(best) == 1
    metrics = (run / "fit" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/MAE", "val/RMSE", "train/loss_step"} <= set(metrics)

    # a second fit into the same folder must not silently overwrite the checkpoints
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args])
    assert exit_info.value.code == 1
    assert "already holds checkpoints" in capsys.readouterr().err

    main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(best[0])])
    main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(best[0])])
    preds = list(run.glob("predict/version_*/*.json"))
    assert preds, list(run.rglob("*"))
    written = json.loads(preds[0].read_text())
    assert written["task"] == "LaMP_3"
    test_ids = [q["id"] for q in json.loads(
        (data / "LaMP_3" / "test" / "test_questions.json").read_text())]
    assert [g["id"] for g in written["golds"]] == test_ids


def test_validate_and_test_with_the_best_checkpoint_reproduce_its_dev_metrics(setup_dir):
    root, data, model = setup_dir
    args = common(root, data, model, "--data.mode", "ipa", "--data.k", "2", "--trainer.max_epochs", "2",
                  "--run_name", "repro")
    main(["fit", *args])
    run = root / "runs" / "repro"
    summary = json.loads((run / "results.json").read_text())
    best = summary["best_checkpoint"]
    main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", best])
    test_dir = max((run / "test").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    tested = json.loads((test_dir / "results.json").read_text())["metrics"]
    for metric in ("MAE", "RMSE"):  # test_split defaults to dev: the same examples as validation
        assert tested[f"test/{metric}"] == pytest.approx(summary["metrics"][f"val/{metric}"], abs=1e-12)

    # the written predictions pass the official-format check and score the same with `evaluate`
    from lamp_fid.evaluate import evaluate
    from lamp_fid.predictions import read_predictions

    preds_file = test_dir / "LaMP_3-test-predictions.json"
    task, preds = read_predictions(preds_file, "LaMP_3")
    assert task == "LaMP_3" and len(preds) == 6
    scores = evaluate(golds=data / "LaMP_3" / "dev" / "dev_outputs.json", preds=preds_file)
    assert scores["MAE"] == pytest.approx(tested["test/MAE"], abs=1e-9)


def test_resume_from_last_checkpoint_continues_the_same_run(setup_dir):
    import torch

    root, data, model = setup_dir
    base = common(root, data, model, "--data.mode", "fid", "--data.k", "2")
    main(["fit", *base, "--trainer.max_epochs", "2", "--run_name", "straight"])
    main(["fit", *base, "--trainer.max_epochs", "1", "--run_name", "resumed"])
    first = torch.load(root / "runs" / "resumed" / "last.ckpt", map_location="cpu", weights_only=False)
    assert first["epoch"] == 0 and first["global_step"] == 3
    main(["fit", *base, "--trainer.max_epochs", "2", "--run_name", "resumed",
          "--ckpt_path", str(root / "runs" / "resumed" / "last.ckpt")])
    straight = torch.load(root / "runs" / "straight" / "last.ckpt", map_location="cpu", weights_only=False)
    resumed = torch.load(root / "runs" / "resumed" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["global_step"] == straight["global_step"] == 6
    # the schedule continues where it stopped (not restarted from warmup)
    assert (resumed["lr_schedulers"][0]["last_epoch"] == straight["lr_schedulers"][0]["last_epoch"] == 6)
    # a resumed run is the same run: same data order, same weights (up to float reordering noise)
    for key, value in straight["state_dict"].items():
        assert torch.allclose(value, resumed["state_dict"][key], rtol=1e-3, atol=1e-3), key
    assert (root / "runs" / "resumed" / "fit" / "version_1").exists()  # the resume logs on its own


@pytest.mark.parametrize("config", CONFIGS + DEMO_CONFIGS, ids=[c.name for c in CONFIGS + DEMO_CONFIGS])
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    expected = (["layout: separate", "data_dir: demo_runs/data/LaMP"] if config.name.startswith("demo")
                else ["model_name_or_path: google/flan-t5-base", "layout: official"])
    assert "task: LaMP_" in out and all(e in out for e in expected)
    assert "demo_data" not in out  # the training CLI knows nothing of demos
    if not config.name.startswith("demo"):  # a task config resolves to the paper table's every setting
        mode, task = config.stem.rsplit("_", 1)
        resolved = paper.flatten(yaml.safe_load(out))
        for key, value in paper.flatten(paper.settings(task, mode)).items():
            assert paper.covers(resolved.get(key), value), (key, resolved.get(key), value)


@pytest.mark.parametrize("spelling", [["--data.k", "0"], ["--data.retriever", "none"]],
                         ids=["k0", "retriever-none"])
def test_every_spelling_of_the_baseline_trains_the_one_baseline_run(setup_dir, spelling):
    """--data.k 0 and --data.retriever none train on the bare input: named, and recorded, as the baseline."""
    root, data, model = setup_dir
    runs = root / f"runs-{spelling[0][7:]}"
    main(["fit", *common(root, data, model, "--data.mode", "fid", *spelling), "--runs_dir", str(runs),
          "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"])
    assert sorted(p.name for p in runs.iterdir()) == ["LaMP_3-none"]
    summary = json.loads((runs / "LaMP_3-none" / "results.json").read_text())
    assert (summary["mode"], summary["retriever"], summary["k"]) == ("none", "none", 0)


def test_the_only_private_lightning_method_overridden_has_no_public_hook():
    """Public hooks do the rest (trainer_defaults callbacks, instantiate_trainer plugins,
    after_instantiate_classes for the lock). If this fails, Lightning changed: look for a public hook
    for the checkpoint's hyperparameters (upstream proposes adapt_checkpoint_hparams)."""
    private = sorted(name for name in vars(LaMPCLI) if name.startswith("_") and not name.startswith("__")
                     and hasattr(LightningCLI, name))
    assert private == ["_parse_ckpt_path"]
    assert "self._parse_ckpt_path()" in inspect.getsource(LightningCLI.__init__)
