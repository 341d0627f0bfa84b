"""Prediction files in the official format from predict/test, and the HF export of the best checkpoint."""

from __future__ import annotations

import json
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lamp_fid.callbacks import HFExport, LaMPPredictionWriter
from lamp_fid.distributed import merge_rank_outputs
from lamp_fid.errors import LaMPError
from lamp_fid.model import FiDModule
from lamp_fid.predictions import read_predictions
from lamp_fid.tasks import get_task
from tiny import build_tiny_t5, passage_loader

TEXTS = ["what a lovely day", "the city council approved the new park today",
         "we study retrieval for personalization", "great product, works as described"]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return str(build_tiny_t5(tmp_path_factory.mktemp("tiny_t5")))


def examples(n: int, with_targets: bool = True) -> list[dict]:
    labels = get_task("LaMP_2").labels
    return [{"id": f"q{n - i}", "passages": [TEXTS[i % 4], TEXTS[(i + 1) % 4]][: 1 + i % 2],
             "target": labels[i % 3] if with_targets else None} for i in range(n)]


def trainer(tmp_path, callbacks, **kw) -> Trainer:
    kw = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
          "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
          "default_root_dir": str(tmp_path), **kw}
    return Trainer(callbacks=callbacks, **kw)


def test_predict_and_test_write_the_official_format(tiny_path, tmp_path):
    m = FiDModule(task="LaMP_2", model_name_or_path=tiny_path, num_beams=2, max_new_tokens=5)
    rows = examples(5, with_targets=False)  # ids q5..q1: dataset order is not sorted order
    writer = LaMPPredictionWriter()
    out = trainer(tmp_path, [writer]).predict(m, passage_loader(m.tokenizer, rows, batch_size=2))
    returned = [pair for batch in out for pair in batch]
    path = tmp_path / "LaMP_2-predict-predictions.json"  # default: the log dir (default_root_dir here)
    assert writer.written["predict"] == path
    raw = json.loads(path.read_text())
    assert raw["task"] == "LaMP_2" and list(raw) == ["task", "golds"]
    assert [g["id"] for g in raw["golds"]] == [r["id"] for r in rows]
    assert [(g["id"], g["output"]) for g in raw["golds"]] == returned

    gold_rows = examples(5)
    writer = LaMPPredictionWriter(path=str(tmp_path / "out" / "{task}_{stage}.json"))
    trainer(tmp_path, [writer]).test(m, passage_loader(m.tokenizer, gold_rows, batch_size=2), verbose=False)
    task, preds = read_predictions(tmp_path / "out" / "LaMP_2_test.json", "LaMP_2")
    assert list(preds) == [r["id"] for r in gold_rows] and preds == m.predictions


def test_news_task_files_carry_the_official_name(tiny_path, tmp_path):
    m = FiDModule(task="LaMP_2N", model_name_or_path=tiny_path, num_beams=1, max_new_tokens=3)
    writer = LaMPPredictionWriter(path=str(tmp_path / "p.json"))
    trainer(tmp_path, [writer]).predict(m, passage_loader(m.tokenizer, examples(2, False)))
    assert json.loads((tmp_path / "p.json").read_text())["task"] == "LaMP_2"


def test_rank_outputs_merge_back_into_dataset_order():
    # 7 examples on 2 ranks as DistributedSampler deals them: rank 0 gets 0,2,4,6; rank 1 gets 1,3,5,0
    ids = [f"e{i}" for i in range(7)]
    rank0 = [(ids[i], f"out{i}") for i in (0, 2, 4, 6)]
    rank1 = [(ids[i], f"out{i}") for i in (1, 3, 5, 0)]
    merged = merge_rank_outputs([rank0, rank1])
    assert list(merged) == ids and merged["e0"] == "out0"


def test_hf_export_holds_the_best_checkpoint_not_the_last(tiny_path, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    torch.manual_seed(0)
    m = FiDModule(task="LaMP_2", model_name_or_path=tiny_path, decoding="labels",
                  optimizer=partial(torch.optim.AdamW, lr=1e-2))
    data = passage_loader(m.tokenizer, examples(6), batch_size=3)
    # the lowest epoch is "best": by construction the first epoch's weights, not the last ones (a
    # monitored loss would make it depend on what a tiny random model learns)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "run"), monitor="epoch", mode="min", save_top_k=1)
    export = HFExport()
    trainer(tmp_path, [ckpt, export], max_epochs=3, enable_checkpointing=True).fit(m, data, data)
    assert export.exported == tmp_path / "run" / "hf_best"
    assert "/epoch=0-" in ckpt.best_model_path
    best = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
    exported = AutoModelForSeq2SeqLM.from_pretrained(export.exported, dtype=torch.float32)
    for name, value in exported.state_dict().items():
        assert torch.equal(value, best[f"model.{name}"]), name
    live = m.model.state_dict()["encoder.block.0.layer.0.SelfAttention.q.weight"]
    assert not torch.equal(exported.state_dict()["encoder.block.0.layer.0.SelfAttention.q.weight"], live)
    tokenizer = AutoTokenizer.from_pretrained(export.exported)
    assert tokenizer("sci-fi")["input_ids"] == m.tokenizer("sci-fi")["input_ids"]
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []  # no temp leftovers


def test_hf_export_replaces_an_earlier_export_never_a_folder_of_other_files(tmp_path):
    class Model:
        def save_pretrained(self, path, state_dict=None):
            (path / "config.json").write_text(json.dumps({"export": self.round}))

    model = Model()
    module = SimpleNamespace(model=model, tokenizer=SimpleNamespace(save_pretrained=lambda path: None))
    stub = SimpleNamespace(checkpoint_callback=None, is_global_zero=True, default_root_dir=str(tmp_path),
                           strategy=SimpleNamespace(barrier=lambda: None))
    for model.round in (1, 2):  # a second fit into the same run folder replaces the export
        HFExport().on_fit_end(stub, module)
    assert json.loads((tmp_path / "hf_best" / "config.json").read_text()) == {"export": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf_best"]
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep me")
    with pytest.raises(LaMPError, match="notes is not a model export folder .no config.json.: not replacing it"):
        HFExport(dirpath=str(notes)).on_fit_end(stub, module)
    assert [p.name for p in notes.iterdir()] == ["mine.txt"]
