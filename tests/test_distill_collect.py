"""Passage scores through the real Lightning validate/test/predict path: the item ids each passage holds,
the scores the model keeps, the file beside the predictions, and predictions left bit-identical."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from tiny import build_tiny_t5

from lamp_fid.callbacks import LaMPPredictionWriter
from lamp_fid.data.fake import write_fake_split
from lamp_fid.data.module import LaMPDataModule
from lamp_fid.distill.collect import scores_path
from lamp_fid.distill.scores import passage_scores, read_scores, scores_by_item
from lamp_fid.errors import LaMPError
from lamp_fid.model import FiDModule
from lamp_fid.prompts import PromptBuilder


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("collect")
    for task in ("LaMP_2", "LaMP_3"):
        for split, n in (("dev", 7), ("test", 5)):
            write_fake_split(root / "data", task, split, n, profile_size=(1, 7), words=(5, 40), seed=1)
    build_tiny_t5(root / "t5")
    return root


def datamodule(root: Path, task: str = "LaMP_3", **kw) -> LaMPDataModule:
    kw = {"k": 4, "mode": "fid", "max_length": 48, "batch_size": 3, **kw}
    return LaMPDataModule(task=task, data_dir=root / "data", cache_dir=root / "cache", download=False,
                          tokenizer=str(root / "t5"), **kw)


def reader(root: Path, task: str = "LaMP_3", **kw) -> FiDModule:
    return FiDModule(task=task, model_name_or_path=str(root / "t5"), num_beams=2, max_new_tokens=4, **kw)


def trainer(root: Path, callbacks=()) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                   default_root_dir=str(root))


def profiles(dm: LaMPDataModule, split: str) -> dict[str, set[str]]:
    return {ex.id: {item["id"] for item in ex.profile} for ex in dm._store(split)}


# --- the item ids of the passages --------------------------------------------------------------

@pytest.mark.parametrize("token_cache", [True, False])
def test_passage_items_follow_the_ranking_and_mark_budget_fallbacks(root, token_cache):
    """LaMP_2 at max_length 18: the official budget falls back to the bare input for some items and
    not for others; exactly those passages hold no item (oracle: the prompt builder's own flag)."""
    dm = datamodule(root, "LaMP_2", k=5, max_length=18, token_cache=token_cache)
    dm.setup("validate")
    items = dm.passage_items("dev")
    store = dm._store("dev")
    rankings = dm._rankings(store)
    builder = PromptBuilder("LaMP_2", dm.tokenizer, 18, mode="fid")
    fell_back = kept = 0
    assert list(items) == list(store.ids)
    for ex in store:
        top = [ex.profile[int(p)] for p in rankings[ex.id][:5]]
        want = []
        for item in top:
            fallback = builder.build(ex.input, [item]).fallback
            fell_back += fallback
            kept += not fallback
            want.append(None if fallback else item["id"])
        assert items[ex.id] == want
    assert fell_back >= 3 and kept >= 3  # both kinds occur: the check can fail either way


def test_passage_items_of_the_separate_layout_and_of_other_modes(root):
    dm = datamodule(root, k=3, layout="separate")
    dm.setup("validate")
    store = dm._store("dev")
    rankings = dm._rankings(store)
    for ex in store:
        want = [None] + [ex.profile[int(p)]["id"] for p in rankings[ex.id][:3]]
        assert dm.passage_items("dev")[ex.id] == want
    ipa = datamodule(root, mode="ipa")
    ipa.setup("validate")
    with pytest.raises(LaMPError, match="--model.passage_scores needs --data.mode fid"):
        ipa.passage_items("dev")


def test_scores_path_sits_beside_the_predictions():
    assert scores_path("runs/x/LaMP_2-predict-predictions.json") == Path("runs/x/LaMP_2-predict-predictions.scores.json")
    assert scores_path("out/preds") == Path("out/preds.scores.json")


# --- scores through Lightning --------------------------------------------------------------------

@pytest.mark.parametrize("group_by_length,token_cache", [("none", True), ("eval", True), ("none", False)])
def test_validate_keeps_the_scores_of_the_same_batches_and_the_same_predictions(root, group_by_length, token_cache):
    options = {"group_by_length": group_by_length, "token_cache": token_cache}
    plain = reader(root)
    trainer(root).validate(plain, datamodule=datamodule(root, **options), verbose=False)
    assert plain.item_scores is None

    dm = datamodule(root, **options)
    scored = reader(root, passage_scores="fid")
    trainer(root).validate(scored, datamodule=dm, verbose=False)
    assert scored.predictions == plain.predictions  # bit-identical outputs, same order
    assert list(scored.item_scores) == list(scored.predictions)

    # the same numbers from the functions, on the loader's own batches
    model = reader(root).eval()
    items = dm.passage_items("dev")
    want = {}
    with torch.no_grad():
        for batch in dm.val_dataloader():
            encoded, mask = model.fuse(batch["input_ids"], batch["attention_mask"])
            scores = passage_scores(model.model, encoded, mask, batch["input_ids"].shape[1])
            want.update(scores_by_item(batch["ids"], [items[i] for i in batch["ids"]], scores))
    assert want.keys() == scored.item_scores.keys()
    own = profiles(dm, "dev")
    for qid, row in want.items():
        assert list(scored.item_scores[qid]) == list(row) and set(row) <= own[qid] and len(row) >= 1
        for item, value in row.items():
            assert math.isclose(scored.item_scores[qid][item], value, rel_tol=1e-5, abs_tol=1e-5)


def test_predict_and_validate_write_the_scores_beside_the_predictions(root, tmp_path):
    writer = LaMPPredictionWriter(path=str(tmp_path / "{task}-{stage}.json"), on_validate=True, overwrite=False)
    plain = trainer(root).predict(reader(root), datamodule=datamodule(root))
    scored = reader(root, passage_scores="fid")
    out = trainer(root, [writer]).predict(scored, datamodule=datamodule(root))
    assert out == plain  # predict_step's pairs are bit-identical

    written = read_scores(tmp_path / "LaMP_3-predict.scores.json")
    assert written == scored.item_scores and len(written) == 5  # the test split, in file order
    preds = json.loads((tmp_path / "LaMP_3-predict.json").read_text())["golds"]
    assert list(written) == [g["id"] for g in preds]
    own = profiles(datamodule(root), "test")
    assert all(set(row) <= own[qid] and row for qid, row in written.items())

    trainer(root, [writer]).validate(reader(root, passage_scores="fid"), datamodule=datamodule(root), verbose=False)
    assert len(read_scores(tmp_path / "LaMP_3-validate.scores.json")) == 7

    # nothing the user has is replaced without overwrite: neither predictions nor scores are written
    (tmp_path / "LaMP_3-predict.json").unlink()
    with pytest.raises(LaMPError, match="already exists"):
        trainer(root, [writer]).predict(reader(root, passage_scores="fid"), datamodule=datamodule(root))
    assert not (tmp_path / "LaMP_3-predict.json").exists()


def test_atlas_scores_need_outputs(root):
    atlas = reader(root, passage_scores="atlas")
    trainer(root).validate(atlas, datamodule=datamodule(root), verbose=False)
    assert len(atlas.item_scores) == 7
    assert all(math.isfinite(v) and v >= 0 for row in atlas.item_scores.values() for v in row.values())
    on_dev = reader(root, passage_scores="atlas")  # predict on a split with outputs: teacher-forced too
    trainer(root).predict(on_dev, datamodule=datamodule(root, predict_split="dev"))
    assert on_dev.item_scores.keys() == atlas.item_scores.keys()
    for qid, row in atlas.item_scores.items():
        assert on_dev.item_scores[qid] == pytest.approx(row, rel=1e-5, abs=1e-6)
    with pytest.raises(LaMPError, match="atlas needs the gold outputs .* the test split has none"):
        trainer(root).predict(reader(root, passage_scores="atlas"), datamodule=datamodule(root))


@pytest.mark.parametrize("layout", ["separate", "official"])
def test_pdist_scores_read_each_item_with_the_passages_that_hold_no_item(root, layout):
    """pdist through Lightning's validate: the model passes the passages without an item (the separate
    layout's input passage) as context, and its numbers equal the function's on the loader's batches
    with that context; predictions stay bit-identical; the test split (no outputs) is refused."""
    plain = reader(root)
    trainer(root).validate(plain, datamodule=datamodule(root, layout=layout), verbose=False)
    dm = datamodule(root, layout=layout)
    scored = reader(root, passage_scores="pdist")
    trainer(root).validate(scored, datamodule=dm, verbose=False)
    assert scored.predictions == plain.predictions and len(scored.item_scores) == 7

    model = reader(root).eval()
    items = dm.passage_items("dev")
    want, contexts = {}, 0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            encoded, mask = model.fuse(batch["input_ids"], batch["attention_mask"])
            rows = [items[i] for i in batch["ids"]]
            k = batch["input_ids"].shape[1]
            context = torch.tensor([[j < len(r) and r[j] is None for j in range(k)] for r in rows])
            contexts += int(context.sum())
            scores = passage_scores(model.model, encoded, mask, k, "pdist", batch["labels"], context)
            want.update(scores_by_item(batch["ids"], rows, scores))
    if layout == "separate":
        assert contexts >= 7  # every example has its input passage
    assert want.keys() == scored.item_scores.keys()
    for qid, row in want.items():
        assert list(scored.item_scores[qid]) == list(row)
        for item, value in row.items():
            assert value <= 0 and math.isclose(scored.item_scores[qid][item], value, rel_tol=1e-5, abs_tol=1e-5)
    with pytest.raises(LaMPError, match="pdist needs the gold outputs .* the test split has none"):
        trainer(root).predict(reader(root, passage_scores="pdist"), datamodule=datamodule(root, layout=layout))


def test_scores_need_the_fid_mode_and_item_ids(root):
    with pytest.raises(LaMPError, match=r"^--model.passage_scores needs --data.mode fid .* got --data.mode ipa$"):
        trainer(root).validate(reader(root, passage_scores="fid"), datamodule=datamodule(root, mode="ipa"),
                               verbose=False)
    dm = datamodule(root)
    dm.setup("validate")
    with pytest.raises(LaMPError, match="needs each passage's profile item id"):
        trainer(root).validate(reader(root, passage_scores="fid"), dm.val_dataloader(), verbose=False)
    with pytest.raises(LaMPError, match="passage_scores must be none, fid, atlas or pdist"):
        reader(root, passage_scores="max")
