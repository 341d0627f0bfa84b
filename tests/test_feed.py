"""The tokenized passage cache wired into the DataModule, and length-grouped batches.

A tiny fit / validate / predict with ``token_cache`` on and off gives bit-identical weights, metrics and
prediction files; ``group_by_length: eval`` gives the same predictions (greedy decoding) and files in
the dataset's order; ``all`` groups training batches by length, deterministic per (seed, epoch) and
resumable mid-epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from lamp_fid.callbacks import LaMPPredictionWriter
from lamp_fid.data.fake import write_fake_split
from lamp_fid.data.module import LaMPDataModule, PassageDataset
from lamp_fid.data.sampler import ResumableLoader
from lamp_fid.data.tokens import LengthGroupedSampler, TokenDataset
from lamp_fid.distributed import merge_rank_outputs
from lamp_fid.errors import LaMPError
from lamp_fid.model import FiDModule
from lamp_fid.predictions import read_predictions
from tests.tiny import build_tiny_t5

TASK = "LaMP_4"  # generation: ROUGE, the metric whose float sums could notice an order


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("feed")
    data = root / "data"
    # words (2, 20) and max_length 128: examples whose longest passage is 42..128 tokens
    for split, n in (("train", 12), ("dev", 11), ("test", 7)):
        write_fake_split(data, TASK, split, n, profile_size=(0, 5), words=(2, 20), seed=4)
    model = build_tiny_t5(root / "tiny", vocab_size=300)
    return root, data, model


def datamodule(env, **options) -> LaMPDataModule:
    root, data, model = env
    return LaMPDataModule(**{"task": TASK, "data_dir": data, "cache_dir": root / "cache", "download": False,
                             "k": 3, "max_length": 128, "max_target_length": 12, "tokenizer": str(model),
                             "batch_size": 4, "eval_batch_size": 3, "predict_split": "test", **options})


def run(env, name: str, fit: bool = True, **options) -> dict:
    """fit (4 steps, validation at the end), then validate and predict with prediction files."""
    root, data, model = env
    out = root / "out" / name
    seed_everything(0)
    module = FiDModule(task=TASK, model_name_or_path=str(model), num_beams=1, max_new_tokens=5)
    writer = LaMPPredictionWriter(path=str(out / "{stage}.json"), on_validate=True)
    trainer = Trainer(accelerator="cpu", max_steps=4, max_epochs=-1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=[writer])
    dm = datamodule(env, **options)
    result = {}
    if fit:
        trainer.fit(module, dm)
        result["fit"] = {k: v.item() for k, v in trainer.callback_metrics.items()}
        result["weights"] = {k: v.clone() for k, v in module.state_dict().items()}
    result["validate"] = trainer.validate(module, dm, verbose=False)[0]
    trainer.predict(module, dm, return_predictions=False)
    result["files"] = {stage: (out / f"{stage}.json").read_text() for stage in ("validate", "predict")}
    result["module"], result["dm"] = module, dm
    return result


@pytest.fixture(scope="module")
def on_off(env):
    return run(env, "cached", token_cache=True), run(env, "on-the-fly", token_cache=False)


def test_the_token_cache_is_the_default_and_serves_every_split(env, on_off):
    cached, plain = on_off
    assert LaMPDataModule.__init__.__defaults__ is not None and datamodule(env).hparams.token_cache is True
    assert all(isinstance(ds, TokenDataset) for ds in cached["dm"].datasets.values())
    assert all(isinstance(ds, PassageDataset) for ds in plain["dm"].datasets.values())


def test_cache_on_and_off_give_the_same_run_bit_for_bit(on_off):
    cached, plain = on_off
    assert cached["fit"] == plain["fit"] and cached["validate"] == plain["validate"]
    assert cached["weights"].keys() == plain["weights"].keys()
    assert all(torch.equal(cached["weights"][k], plain["weights"][k]) for k in cached["weights"])
    assert cached["files"] == plain["files"]


def test_prediction_files_are_in_the_dataset_order(env, on_off):
    cached, _ = on_off
    dm = cached["dm"]
    _, dev = read_predictions(Path(env[0] / "out" / "cached" / "validate.json"))
    _, test = read_predictions(Path(env[0] / "out" / "cached" / "predict.json"))
    assert list(dev) == dm.datasets["dev"].ids and list(test) == dm.datasets["test"].ids


def test_fallbacks_are_still_reported_with_the_cache(env):
    counts = []
    for cache in (True, False):
        dm = datamodule(env, token_cache=cache, max_length=40)  # inputs over the budget
        dm.setup("validate")
        batches = list(dm.val_dataloader())
        counts.append((sum(b["fallbacks"] for b in batches), sum(b["retries"] for b in batches)))
    assert counts[0] == counts[1] and counts[0][0] > 0  # the data does overflow the budget


def test_length_grouped_evaluation_gives_the_same_predictions_and_metrics(env, on_off):
    cached, _ = on_off
    runs = {}
    for group in ("eval", "none"):  # the same trained weights, greedy decoding
        module = FiDModule(task=TASK, model_name_or_path=str(env[2]), num_beams=1, max_new_tokens=5)
        module.load_state_dict(cached["weights"])
        runs[group] = evaluate(env, module, datamodule(env, group_by_length=group), f"eval-{group}")
    assert runs["eval"]["files"] == runs["none"]["files"] == cached["files"]
    got, want = runs["eval"]["validate"], runs["none"]["validate"]
    assert got.keys() == want.keys()
    for k, v in want.items():  # ROUGE means sum the per-example rows in the order they were seen
        # the loss is a mean over batches padded to other lengths: equal up to float32 summation order
        assert got[k] == (pytest.approx(v, rel=1e-5) if k.endswith("/loss") else pytest.approx(v, abs=1e-12))
    # the sorted loader really did reorder the batches: longest first, not the file order
    dm = runs["eval"]["dm"]
    order = [i for b in dm.val_dataloader().batch_sampler for i in b]
    lengths = dm.datasets["dev"].longest()
    assert order != sorted(order) and list(lengths[order]) == sorted(lengths, reverse=True)


def evaluate(env, module: FiDModule, dm: LaMPDataModule, name: str) -> dict:
    """validate and predict ``module`` on ``dm`` into fresh prediction files."""
    out = env[0] / "out" / name
    writer = LaMPPredictionWriter(path=str(out / "{stage}.json"), on_validate=True)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[writer])
    result = {"validate": trainer.validate(module, dm, verbose=False)[0], "dm": dm}
    trainer.predict(module, dm, return_predictions=False)
    result["files"] = {stage: (out / f"{stage}.json").read_text() for stage in ("validate", "predict")}
    return result


def test_grouped_training_fits(env):
    seed_everything(0)
    module = FiDModule(task=TASK, model_name_or_path=str(env[2]), num_beams=1, max_new_tokens=5)
    trainer = Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    dm = datamodule(env, group_by_length="all")
    trainer.fit(module, dm)
    loader = trainer.train_dataloader
    assert isinstance(loader.sampler, LengthGroupedSampler) and loader.sampler.epoch == 1  # Lightning drove it
    assert trainer.global_step == 6


def test_merge_rank_outputs_restores_the_dataset_order():
    per_rank = [[("c", "3"), ("a", "1")], [("b", "2"), ("c", "3")]]
    assert list(merge_rank_outputs(per_rank)) == ["c", "b", "a"]
    assert list(merge_rank_outputs(per_rank, order=["a", "b", "c"])) == ["a", "b", "c"]
    assert merge_rank_outputs(per_rank, order=["b"]) == {"b": "2", "c": "3", "a": "1"}


# --- training batches grouped by length -----------------------------------------------------------

LENGTHS = [5, 40, 12, 33, 7, 21, 18, 2, 29, 11, 26, 3, 16]


def grouped_loader(ranks: int = 1, rank: int = 0, seed: int = 5) -> ResumableLoader:
    data = list(range(len(LENGTHS)))
    sampler = LengthGroupedSampler(data, lengths=LENGTHS, batch_size=2, group_batches=2, num_replicas=ranks,
                                   rank=rank, seed=seed)
    return ResumableLoader(data, batch_size=2, sampler=sampler)


def batches(loader) -> list[list[int]]:
    return [b.tolist() for b in loader]


def test_training_groups_are_sorted_and_depend_only_on_seed_and_epoch():
    loader = grouped_loader()
    first = batches(loader)
    assert first == batches(grouped_loader()) and sorted(sum(first, [])) == list(range(len(LENGTHS)))
    flat = sum(first, [])
    for g in range(0, len(flat), 4):  # groups of 2 batches of 2, each sorted longest first
        group = [LENGTHS[i] for i in flat[g:g + 4]]
        assert group == sorted(group, reverse=True)
    loader.sampler.set_epoch(1)
    assert batches(loader) != first and batches(grouped_loader(seed=6)) != first


@pytest.mark.parametrize("ranks", [1, 2])
def test_grouped_training_resumes_with_the_batches_not_trained_on(ranks):
    for rank in range(ranks):
        straight = grouped_loader(ranks, rank)
        straight.sampler.set_epoch(2)
        expected = batches(straight)
        straight.trained_batches = lambda: 2
        state = straight.state_dict()
        resumed = grouped_loader(ranks, rank, seed=99)  # the seed comes from the state
        resumed.load_state_dict(state)
        assert batches(resumed) == expected[2:]


def test_bad_options_are_one_line(env):
    with pytest.raises(LaMPError, match="group_by_length eval needs the token cache"):
        datamodule(env, token_cache=False, group_by_length="eval")
    with pytest.raises(LaMPError, match="group_by_length must be none, eval or all"):
        datamodule(env, group_by_length="train")
    with pytest.raises(LaMPError, match="lengths for"):
        LengthGroupedSampler(list(range(3)), lengths=[1, 2], batch_size=2)


# --- dense ranking: item embeddings reused across files, encoders keyed by content ------------------

from tests.test_dense import encoder_dir  # noqa: E402,F401  (the tiny BERT fixture)


def time_split(folder: Path, users: int = 4, seed: int = 1) -> dict[str, Path]:
    """A LaMP_7 time split in miniature: each user's first 2 questions in train, the 3rd in dev, whose
    profile shares most items with the train questions and adds 2 new ones."""
    from lamp_fid.data.fake import fake_examples

    records = [q for q, _ in fake_examples("LaMP_7", 3 * users, profile_size=(6, 12), words=(3, 12),
                                           seed=seed, questions_per_user=3)]
    fresh = [q["profile"] for q, _ in fake_examples("LaMP_7", users, profile_size=(2, 2), words=(3, 12),
                                                    seed=seed + 1)]
    split = {"train": [], "dev": []}
    for u in range(users):
        split["train"] += records[3 * u:3 * u + 2]
        split["dev"].append({**records[3 * u + 2], "profile": records[3 * u + 2]["profile"] + fresh[u]})
    paths = {}
    for name, questions in split.items():
        paths[name] = folder / f"{name}_questions.json"
        paths[name].write_text(json.dumps(questions))
    return paths


def open_store(path: Path, cache: Path):
    from lamp_fid.data.store import LaMPStore

    return LaMPStore.open("LaMP_7", path, None, cache_dir=cache, progress=False)


def item_set(store) -> set[str]:
    from lamp_fid.retrieval.base import item_texts

    return {t for ex in store for t in item_texts(store.task, ex)}


@pytest.fixture
def count_embedded(monkeypatch):
    """Item texts each ``DenseRetriever.embed`` call embeds (queries are counted apart)."""
    from lamp_fid.retrieval.dense import DenseRetriever

    calls: list[int] = []
    embed = DenseRetriever.embed

    def counting(self, texts, desc="embed", *args, **kwargs):
        if "item" in desc:
            calls.append(len(texts))
        return embed(self, texts, desc, *args, **kwargs)

    monkeypatch.setattr(DenseRetriever, "embed", counting)
    return calls


def test_ranking_dev_after_train_embeds_only_the_new_items(tmp_path, encoder_dir, count_embedded):
    from lamp_fid.retrieval.dense import DenseRetriever
    from lamp_fid.retrieval.rank import get_rankings

    paths, cache = time_split(tmp_path), tmp_path / "cache"
    train, dev = open_store(paths["train"], cache), open_store(paths["dev"], cache)
    get_rankings(train, "dense", encoder=encoder_dir, cache_dir=cache, progress=False)
    assert count_embedded == [len(item_set(train))]
    get_rankings(dev, "dense", encoder=encoder_dir, cache_dir=cache, progress=False)
    new = item_set(dev) - item_set(train)
    assert 0 < len(new) < len(item_set(dev)) and count_embedded[1:] == [len(new)]
    # the reused rows are the encoder's embeddings of those texts (up to float32 noise of batch shapes)
    texts = sorted(item_set(dev))
    fresh = DenseRetriever("LaMP_7", encoder=encoder_dir, progress=False).embed(texts)
    cached = DenseRetriever("LaMP_7", encoder=encoder_dir, progress=False, cache_dir=cache)
    assert torch.allclose(cached.embed_items(texts), fresh, atol=1e-5)
    assert (cached.embedded, cached.reused) == (0, len(texts))


def test_a_damaged_embedding_shard_is_embedded_again(tmp_path, encoder_dir, count_embedded, capsys):
    from lamp_fid.retrieval.dense import DenseRetriever

    cache = tmp_path / "cache"
    r = DenseRetriever("LaMP_7", encoder=encoder_dir, progress=False, cache_dir=cache)
    want = r.embed_items(["w1 w2", "w3"])
    (shard,) = (p for p in r.embedding_cache().root.iterdir() if p.is_dir())
    matrix = np.load(shard / "matrix.npy")
    np.save(shard / "matrix.npy", matrix + 1)  # same size, other content
    assert torch.equal(r.embed_items(["w1 w2", "w3"]), want) and r.embedded == 2
    assert "ignoring the damaged embedding cache" in capsys.readouterr().err


def dev_and_encoder(tmp_path, encoder_dir):
    import shutil

    paths, cache = time_split(tmp_path), tmp_path / "cache"
    encoder = tmp_path / "encoder"
    shutil.copytree(encoder_dir, encoder)  # copy2: sizes and modification times kept
    return open_store(paths["dev"], cache), encoder, cache


def test_a_copied_encoder_reads_the_cached_rankings_back(tmp_path, encoder_dir, count_embedded):
    import shutil

    from lamp_fid.retrieval.rank import get_rankings

    dev, encoder, cache = dev_and_encoder(tmp_path, encoder_dir)
    before = get_rankings(dev, "dense", encoder=str(encoder), cache_dir=cache, progress=False)
    shutil.copytree(encoder, tmp_path / "copy")
    calls = len(count_embedded)
    again = get_rankings(dev, "dense", encoder=str(tmp_path / "copy"), cache_dir=cache, progress=False)
    assert len(count_embedded) == calls  # read back: nothing embedded
    assert again.ids == before.ids and np.array_equal(again.positions, before.positions)


def test_a_retrained_encoder_with_the_same_sizes_and_times_is_ranked_again(tmp_path, encoder_dir):
    """Retrained weights copied over the old ones with the same sizes and times (``cp -p``): the
    ranking cache keys an encoder by content, so the stale rankings are not read back."""
    import os
    import shutil

    from transformers import BertConfig, BertModel

    from lamp_fid.retrieval.rank import get_rankings

    dev, encoder, cache = dev_and_encoder(tmp_path, encoder_dir)
    before = get_rankings(dev, "dense", encoder=str(encoder), cache_dir=cache, progress=False)
    weights = encoder / "model.safetensors"
    stat = weights.stat()
    torch.manual_seed(1)  # "retrained": other weights of the same shapes
    BertModel(BertConfig.from_pretrained(encoder)).save_pretrained(tmp_path / "retrained")
    shutil.copyfile(tmp_path / "retrained" / "model.safetensors", weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size and weights.stat().st_mtime_ns == stat.st_mtime_ns
    after = get_rankings(dev, "dense", encoder=str(encoder), cache_dir=cache, progress=False)
    fresh = get_rankings(dev, "dense", encoder=str(encoder), cache_dir=tmp_path / "other", progress=False)
    assert np.array_equal(after.positions, fresh.positions)
    assert not np.array_equal(after.positions, before.positions)  # the data can tell the difference
