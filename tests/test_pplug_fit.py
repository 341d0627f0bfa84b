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
from tiny import build_tiny_t5, write_lamp3_splits

T5_DIR = Path(__file__).resolve().parents[2] / "shared/assets/flan-t5-small"


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pplug")
    # profile_size from 0: some users have no history (PersonaPlug's Proj(0) path)
    data = write_lamp3_splits(root / "data", profile_size=(0, 5))
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
    ("pplug+ipa", ["--data.k", "2", "--data.group_by_length", "all"], "LaMP_3-pplug+ipa-bm25-k2"),
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


def _datamodule(root, data, model, bert, mode="pplug+fid", **options) -> LaMPDataModule:
    options = {"k": 2, "batch_size": 4, "max_length": 64, **options}
    return LaMPDataModule(task="LaMP_3", data_dir=data, cache_dir=root / "cache", download=False, mode=mode,
                          tokenizer=str(model), user_encoder=str(bert), **options)


def _first_batch(dm: LaMPDataModule, stage: str = "validate") -> dict:
    dm.prepare_data()
    dm.setup(stage)
    return next(iter(dm.val_dataloader()))


def test_the_batch_contract(setup_dir):
    root, data, model, bert = setup_dir
    dm = _datamodule(root, data, model, bert)
    batch = _first_batch(dm)
    B = len(batch["ids"])
    assert batch["query_ids"].shape[0] == B and batch["query_ids"].shape == batch["query_mask"].shape
    assert batch["hist"].dtype == torch.float32 and batch["hist_mask"].dtype == torch.bool
    assert batch["hist"].shape[:2] == batch["hist_mask"].shape and batch["hist"].shape[2] == 16
    assert batch["index"].tolist() == list(range(B))
    # the user tokenizer's text: instruction + the task's φq(x)
    from transformers import AutoTokenizer

    from lamp_fid.pplug import BGE_INSTRUCTION
    from lamp_fid.tasks import get_task

    store = dm._store("dev")
    tok = AutoTokenizer.from_pretrained(bert)
    want = tok(BGE_INSTRUCTION + get_task("LaMP_3").query_of(store[0].input))["input_ids"]
    assert batch["query_ids"][0, :len(want)].tolist() == want and int(batch["query_mask"][0].sum()) == len(want)
    for b in range(B):
        n = len(store[b].profile)
        assert batch["hist_mask"][b].tolist() == [j < n for j in range(batch["hist"].shape[1])]
    # history_max_items keeps the last items of each profile
    capped = _first_batch(_datamodule(root, data, model, bert, history_max_items=2))
    for b in range(B):
        n = len(store[b].profile)
        assert int(capped["hist_mask"][b].sum()) == min(n, 2)
        assert torch.equal(capped["hist"][b, :min(n, 2)], batch["hist"][b, max(n - 2, 0):n])
    # the on-the-fly path (token_cache false) and workers give the same batch
    other = _first_batch(_datamodule(root, data, model, bert, token_cache=False, num_workers=1))
    for key in ("input_ids", "attention_mask", "labels", "query_ids", "query_mask", "hist", "hist_mask"):
        assert torch.equal(batch[key], other[key]), key


def test_history_dropout_masks_items_by_seed_epoch_and_index(setup_dir):
    from lamp_fid.data.history import history_dropout
    from lamp_fid.data.pplug_batch import apply_history_dropout

    root, data, model, bert = setup_dir
    batch = _first_batch(_datamodule(root, data, model, bert))
    before = batch["hist_mask"].clone()
    apply_history_dropout(batch, 1.0, seed=3, epoch=2)
    for b, index in enumerate(batch["index"].tolist()):
        n = int(before[b].sum())
        keep = history_dropout(n, 3, 2, index, 1.0)
        assert batch["hist_mask"][b].nonzero().flatten().tolist() == keep.tolist()
        assert (len(keep) < n) == (n > 2)


def _frozen_lm_fit(root, data, model, bert, run: str, *extra):
    main(["fit", *common(root, data, model, bert, "--data.mode", "pplug", "--trainer.max_steps", "3",
                         "--run_name", run, *extra)])
    return torch.load(root / "runs" / run / "last.ckpt", map_location="cpu", weights_only=True)


def test_a_frozen_lm_stays_bit_identical_and_only_pplug_gets_gradients(setup_dir):
    from transformers import AutoModelForSeq2SeqLM

    root, data, model, bert = setup_dir
    ckpt = _frozen_lm_fit(root, data, model, bert, "frozen")
    assert ckpt["global_step"] == 3
    initial = AutoModelForSeq2SeqLM.from_pretrained(model, dtype=torch.float32).state_dict()
    trained = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    assert set(trained) == set(initial)
    for key, value in initial.items():
        assert torch.equal(trained[key], value), key
    # the optimizer holds only PPlug's parameters
    module = FiDModule(task="LaMP_3", model_name_or_path=str(model), mode="pplug", user_encoder=str(bert))
    n_user = sum(1 for _ in module.user.parameters())
    assert sum(len(g["params"]) for g in ckpt["optimizer_states"][0]["param_groups"]) == n_user
    plug_start = module.user.state_dict()
    assert any(not torch.equal(ckpt["state_dict"][f"user.{k}"], v) for k, v in plug_start.items())

    # one backward: gradients on I, Proj_I, Proj and the query encoder only
    batch = _first_batch(_datamodule(root, data, model, bert, mode="pplug"))
    module.train()
    module(batch["input_ids"], batch["attention_mask"], batch["labels"], **module.user_inputs(batch)).loss.backward()
    with_grad = {name for name, p in module.named_parameters() if p.grad is not None}
    assert with_grad and all(name.startswith(("user.instruction", "user.proj_instruction.", "user.proj.",
                                              "user.encoder.")) for name in with_grad)
    assert {"user.instruction", "user.proj.0.weight", "user.proj_instruction.2.bias"} <= with_grad
    assert any(name.startswith("user.encoder.") for name in with_grad)
    assert all(not p.requires_grad for p in module.model.parameters())


def test_freeze_lm_false_trains_the_lm_too(setup_dir):
    root, data, model, bert = setup_dir
    module = FiDModule(task="LaMP_3", model_name_or_path=str(model), mode="pplug", user_encoder=str(bert),
                       freeze_lm=False)
    n_all = sum(1 for p in module.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in module.parameter_groups()) == n_all > sum(1 for _ in module.user.parameters())
    # outside the PPlug modes nothing changes: no user embedder, the LM's parameters only
    plain = FiDModule(task="LaMP_3", model_name_or_path=str(model), mode="fid")
    assert plain.user is None and not any(k.startswith("user.") for k in plain.state_dict())


def test_the_export_loads_back_without_pickle(setup_dir):
    from transformers import AutoModelForSeq2SeqLM

    from lamp_fid.pplug import load_persona_plug

    root, data, model, bert = setup_dir
    _frozen_lm_fit(root, data, model, bert, "export", "--data.history_max_items", "3")
    export = root / "runs" / "export" / "hf_best"
    best = json.loads((root / "runs" / "export" / "results.json").read_text())["best_checkpoint"]
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    lm = AutoModelForSeq2SeqLM.from_pretrained(export)
    plug = load_persona_plug(export, lm.get_input_embeddings()).eval()
    for key, value in plug.state_dict().items():
        if not key.startswith("encoder.pooler"):
            assert torch.equal(value, state[f"user.{key}"]), key
    meta = json.loads((export / "persona_plug.json").read_text())
    assert meta["mode"] == "pplug" and meta["pooling"] == "cls" and meta["n_soft"] == 2


def test_a_pplug_fit_resumes(setup_dir):
    root, data, model, bert = setup_dir
    base = ["--data.mode", "pplug+fid", "--data.k", "2", "--data.history_dropout", "0.5"]
    main(["fit", *common(root, data, model, bert, *base, "--trainer.max_epochs", "2", "--run_name", "straight")])
    main(["fit", *common(root, data, model, bert, *base, "--trainer.max_epochs", "1", "--run_name", "resumed")])
    main(["fit", *common(root, data, model, bert, *base, "--trainer.max_epochs", "2", "--run_name", "resumed",
                         "--ckpt_path", "last")])
    straight = torch.load(root / "runs" / "straight" / "last.ckpt", map_location="cpu", weights_only=True)
    resumed = torch.load(root / "runs" / "resumed" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == straight["global_step"] == 6
    for key, value in straight["state_dict"].items():
        assert torch.allclose(value, resumed["state_dict"][key], rtol=1e-3, atol=1e-3), key


# --- tune and report know the modes ---------------------------------------------------------------

def test_tune_runs_pplug_once_and_the_combined_modes_per_cell(tmp_path, monkeypatch):
    import lamp_fid.train as train
    from lamp_fid import tune as tune_module
    from test_tune import FakeFit, config, opts

    monkeypatch.setattr(tune_module, "_release_memory", lambda: None)

    def mae(mode, retriever, k):
        return {"MAE": {"none": 0.9, "pplug": 0.5, "fid": 0.6, "pplug+fid": 0.4}[mode] + k / 100, "RMSE": 1.0}

    fake = FakeFit("LaMP_3", mae)
    monkeypatch.setattr(train, "lightning_main", fake)
    summary = tune_module.tune(config(tmp_path, "LaMP_3"), retrievers=["bm25", "recency"], ks=[1, 2],
                               modes=["pplug", "fid", "pplug+fid"], runs_dir=tmp_path / "runs")
    names = [opts(c)["--run_name"] for c in fake.calls]
    assert names[:2] == ["tune-LaMP_3-none", "tune-LaMP_3-pplug"] and len(names) == 2 + 2 * 4
    pplug = opts(fake.calls[1])
    assert (pplug["--data.mode"], pplug["--data.retriever"], pplug["--data.k"]) == ("pplug", "none", "0")
    assert "tune-LaMP_3-pplug+fid-bm25-k1" in names
    assert summary["best"]["run_name"] == "tune-LaMP_3-pplug+fid-bm25-k1"
    assert summary["baseline"]["run_name"] == "tune-LaMP_3-none"


def test_report_labels_and_plots_pplug_runs(tmp_path):
    from lamp_fid.report import collect, report
    from test_report import read_csv, write_result

    runs = tmp_path / "runs"
    write_result(runs, "LaMP_3-none", "LaMP_3", "none", "none", 0, {"MAE": 0.5, "RMSE": 1.0})
    write_result(runs, "LaMP_3-pplug", "LaMP_3", "pplug", "none", 0, {"MAE": 0.45, "RMSE": 0.9})
    write_result(runs, "LaMP_3-pplug+fid-bm25-k2", "LaMP_3", "pplug+fid", "bm25", 2, {"MAE": 0.3, "RMSE": 0.8})
    results, warnings = collect(runs)
    assert warnings == []
    rows = {r.run_name: r for r in results}
    assert rows["LaMP_3-pplug"].label() == "pplug" and not rows["LaMP_3-pplug"].is_baseline
    assert rows["LaMP_3-pplug+fid-bm25-k2"].label() == "pplug+fid-bm25"
    report(runs, tmp_path / "rep")
    csv_rows = read_csv(next((tmp_path / "rep").glob("*.csv")))
    assert {r["mode"] for r in csv_rows} == {"none", "pplug", "pplug+fid"}
    md = next((tmp_path / "rep").glob("*.md")).read_text()
    assert "LaMP_3-pplug+fid-bm25-k2" in md and "★" in md


# --- the shipped config with a Flan-T5-shaped LM ----------------------------------------------------

FLAN_T5_BASE = dict(d_model=768, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12, d_kv=64,
                    vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                    dropout_rate=0.1, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    layer_norm_epsilon=1e-6, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def _random_flan_t5(path: Path, config: dict | None) -> Path:
    """A random-init T5 of the real Flan-T5 config (small's file, or ``config``) with the real tokenizer."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    cfg = T5Config.from_pretrained(T5_DIR) if config is None else T5Config(**config)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        T5ForConditionalGeneration(cfg).save_pretrained(path)
    AutoTokenizer.from_pretrained(T5_DIR).save_pretrained(path)
    return path


@pytest.mark.parametrize("shape", [pytest.param(None, id="flan-t5-small"),
                                   pytest.param(FLAN_T5_BASE, id="flan-t5-base", marks=pytest.mark.slow)])
def test_the_shipped_pplug_config_fits_checkpoints_exports_and_predicts(tmp_path, shape):
    if not (T5_DIR / "tokenizer.json").exists():
        pytest.skip(f"no Flan-T5 tokenizer at {T5_DIR}")
    from lamp_fid.paper import CONFIGS_DIR
    from lamp_fid.predictions import read_predictions

    data = tmp_path / "data"
    for split, n in (("train", 4), ("dev", 2), ("test", 2)):
        write_fake_split(data, "LaMP_3", split, n, profile_size=(0, 4), words=(5, 12), seed=4)
    model = _random_flan_t5(tmp_path / "t5", shape)
    bert = build_tiny_bert(tmp_path / "bert")
    args = ["--config", str(CONFIGS_DIR / "pplug_lamp3.yaml"), "--data.data_dir", str(data),
            "--data.cache_dir", str(tmp_path / "cache"), "--data.download", "false", "--data.batch_size", "2",
            "--data.user_encoder", str(bert), "--model.model_name_or_path", str(model),
            "--runs_dir", str(tmp_path / "runs"), "--trainer.max_steps", "2", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--model.max_new_tokens", "3"]
    main(["fit", *args])
    run = tmp_path / "runs" / "LaMP_3-pplug"
    assert (run / "last.ckpt").exists() and list(run.glob("best-*.ckpt"))
    export = run / "hf_best"
    assert {"model.safetensors", "persona_plug.safetensors", "persona_plug.json"} <= {p.name for p in export.iterdir()}
    assert (export / "user_encoder" / "model.safetensors").exists()
    main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "last.ckpt")])
    (preds,) = run.glob("predict/version_*/LaMP_3-predict-predictions.json")
    task, predictions = read_predictions(preds, "LaMP_3")
    test_ids = [q["id"] for q in json.loads((data / "LaMP_3" / "test" / "test_questions.json").read_text())]
    assert task == "LaMP_3" and list(predictions) == test_ids


# --- hostile options ------------------------------------------------------------------------------

def _refused(capsys, args: list[str]) -> str:
    from test_hostile_train import refused

    return refused(capsys, args)


def test_an_unknown_pooling_is_refused(setup_dir, capsys):
    """The CLI's parser refuses it as it refuses any value outside an option's choices (its usage and
    one error line naming the option, exit 2); the Python API with one LaMPError line."""
    from lamp_fid.errors import LaMPError

    root, data, model, bert = setup_dir
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *common(root, data, model, bert, "--data.mode", "pplug", "--data.user_pooling", "max",
                             "--run_name", "bad-pool")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert 'Parser key "data.user_pooling"' in err and "Got value: max" in err
    assert not (root / "runs" / "bad-pool").exists()
    with pytest.raises(LaMPError, match="unknown pooling 'max'"):
        FiDModule(task="LaMP_3", model_name_or_path=str(model), mode="pplug", user_encoder=str(bert),
                  user_pooling="max")
    with pytest.raises(LaMPError, match="unknown pooling 'max'"):
        _datamodule(root, data, model, bert, user_pooling="max")


def test_a_missing_user_encoder_folder_is_one_line(setup_dir, capsys, tmp_path):
    root, data, model, bert = setup_dir
    missing = tmp_path / "no-such-encoder"
    line = _refused(capsys, ["fit", *common(root, data, model, bert, "--data.mode", "pplug",
                                            "--data.user_encoder", str(missing), "--run_name", "no-enc")])
    assert str(missing) in line and "user encoder" in line


def test_a_user_encoder_without_a_tokenizer_is_one_line(setup_dir, capsys, tmp_path):
    import shutil

    root, data, model, bert = setup_dir
    bare = tmp_path / "bare-encoder"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(bert / name, bare / name)
    line = _refused(capsys, ["fit", *common(root, data, model, bert, "--data.mode", "pplug",
                                            "--data.user_encoder", str(bare), "--run_name", "no-tok",
                                            "--trainer.max_steps", "1")])
    assert str(bare) in line and "has no tokenizer" in line
    from lamp_fid.errors import LaMPError

    with pytest.raises(LaMPError, match="has no tokenizer"):
        _datamodule(root, data, model, bare, mode="pplug").prepare_data()
    assert not (root / "runs" / "no-tok" / "last.ckpt").exists()


@pytest.mark.parametrize("option, value", [("history_dropout", "1.5"), ("history_max_items", "0"),
                                           ("query_max_length", "0")])
def test_bad_history_options_are_one_line(setup_dir, capsys, option, value):
    root, data, model, bert = setup_dir
    line = _refused(capsys, ["fit", *common(root, data, model, bert, "--data.mode", "pplug",
                                            f"--data.{option}", value, "--run_name", f"bad-{option}")])
    assert option in line


def test_a_user_without_history_gets_soft_tokens_and_no_nan(setup_dir):
    root, data, model, bert = setup_dir
    dm = _datamodule(root, data, model, bert, mode="pplug")
    batch = _first_batch(dm)
    # every user of the batch without history (Proj(0) for all), as pad_histories makes it
    batch["hist"], batch["hist_mask"] = batch["hist"][:, :0], batch["hist_mask"][:, :0]
    module = FiDModule(task="LaMP_3", model_name_or_path=str(model), mode="pplug", user_encoder=str(bert)).eval()
    with torch.no_grad():
        out = module(batch["input_ids"], batch["attention_mask"], batch["labels"], **module.user_inputs(batch))
        soft = module.soft_tokens(*(batch[k] for k in ("query_ids", "query_mask", "hist", "hist_mask")))
    assert torch.isfinite(out.loss) and torch.isfinite(soft).all()
    P = soft[:, 1]  # all users get the same P = Proj(0), at the LM's embedding norm
    assert torch.allclose(P, P[:1].expand_as(P), atol=1e-6)
    assert len(module.generate(batch["input_ids"], batch["attention_mask"], **module.user_inputs(batch))) == \
        len(batch["ids"])
    # the fake data hold such users: the fits above ran through them
    assert any(len(ex.profile) == 0 for ex in dm._store("dev"))


def test_a_pplug_checkpoint_evaluates_only_in_a_pplug_mode(setup_dir, capsys):
    root, data, model, bert = setup_dir
    _frozen_lm_fit(root, data, model, bert, "mismatch", "--trainer.limit_val_batches", "1")
    ckpt = str(root / "runs" / "mismatch" / "last.ckpt")
    line = _refused(capsys, ["predict", *common(root, data, model, bert, "--data.mode", "fid", "--data.k", "1",
                                                "--run_name", "mismatch", "--ckpt_path", ckpt)])
    assert "--data.mode: pplug -> fid" in line
    # another PPlug mode loads the same weights (the passages change, the user embedder does not)
    main(["predict", *common(root, data, model, bert, "--data.mode", "pplug+ipa", "--data.k", "1",
                             "--run_name", "mismatch", "--ckpt_path", ckpt)])


@pytest.mark.parametrize("persona", ["every_passage", "extra_passage"])
def test_skipping_empty_passages_stays_exact_with_soft_tokens(setup_dir, persona):
    root, data, model, bert = setup_dir
    batch = _first_batch(_datamodule(root, data, model, bert, mode="pplug+fid", k=3))
    empty = ~batch["attention_mask"].any(-1)  # [B, k]: users with fewer than 3 items
    assert empty.any() and not empty.all()
    losses, outputs = [], []
    for skip in (True, False):
        torch.manual_seed(0)
        module = FiDModule(task="LaMP_3", model_name_or_path=str(model), mode="pplug+fid", user_encoder=str(bert),
                           persona=persona, skip_empty_passages=skip).eval()
        with torch.no_grad():
            encoded, mask = module.fuse(batch["input_ids"], batch["attention_mask"], **module.user_inputs(batch))
            losses.append(module.model(encoder_outputs=encoded, attention_mask=mask, labels=batch["labels"]).loss)
            outputs.append(module.decode(encoded, mask))
        B, k, L = batch["input_ids"].shape
        assert mask.shape == ((B, 2 + k * L) if persona == "extra_passage" else (B, k * (2 + L)))
        per_passage = mask[:, 2:].reshape(B, k, L) if persona == "extra_passage" else mask.reshape(B, k, 2 + L)
        assert not per_passage[empty].any() and per_passage[~empty].any(-1).all()  # empty stays unseen
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    assert outputs[0] == outputs[1]


@pytest.mark.slow
def test_pplug_fid_under_two_process_ddp_matches_one_process(tmp_path):
    """2-process DDP on CPU (gloo): a pplug+fid fit with history dropout runs (every PPlug parameter gets
    a gradient on every rank), and test gives the 1-process metrics and predictions."""
    from tests.test_ddp import lamp_fid

    data = tmp_path / "data"
    for split, n in (("train", 16), ("dev", 7), ("test", 7)):
        write_fake_split(data, "LaMP_3", split, n, profile_size=(0, 4), words=(4, 10), seed=3)
    model, bert = build_tiny_t5(tmp_path / "tiny"), build_tiny_bert(tmp_path / "bert")
    args = common(tmp_path, data, model, bert, "--data.mode", "pplug+fid", "--data.k", "2",
                  "--data.history_dropout", "0.5", "--trainer.max_epochs", "1", "--data.batch_size", "2")
    lamp_fid("fit", *args, "--trainer.devices", "2", "--trainer.strategy", "ddp", cwd=tmp_path)
    run = tmp_path / "runs" / "LaMP_3-pplug+fid-bm25-k2"
    results = {}
    for devices in ("1", "2"):
        strategy = ["--trainer.strategy", "ddp"] if devices == "2" else []
        lamp_fid("test", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "last.ckpt"),
                 "--trainer.devices", devices, *strategy, cwd=tmp_path)
        test_dir = max((run / "test").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
        results[devices] = (json.loads((test_dir / "results.json").read_text())["metrics"],
                            json.loads((test_dir / "LaMP_3-test-predictions.json").read_text()))
    one, two = results["1"], results["2"]
    assert len(one[1]["golds"]) == 7
    assert sorted(map(json.dumps, two[1]["golds"])) == sorted(map(json.dumps, one[1]["golds"]))
    for key in ("test/MAE", "test/RMSE"):  # the loss is a mean over other batches under DDP
        assert two[0][key] == pytest.approx(one[0][key], abs=1e-12), key
