"""The tokenized passage cache: batches bit-identical to today's on-the-fly path, keyed and verified.

The oracle is the current loader itself (``PassageDataset`` + ``PassageCollator``) on the same fake
LaMP files, for every task and mode. The real Flan-T5 tokenizer is used when the assets are beside the
repository, else a small T5-like tokenizer trained here.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

from lamp_fid.data import tokens
from lamp_fid.data.fake import fake_examples, write_fake_split
from lamp_fid.data.module import PassageCollator, PassageDataset
from lamp_fid.data.store import LaMPStore
from lamp_fid.data.tokens import (LengthGroupedBatchSampler, PadCollator, TokenDataset, open_tokens,
                                  padding_fraction, tokenizer_identity)
from lamp_fid.errors import LaMPDataError, LaMPError
from lamp_fid.prompts import PromptBuilder
from lamp_fid.retrieval.rank import get_rankings
from lamp_fid.tasks import TASKS
from tests.tiny import build_tokenizer

T5_DIR = Path(__file__).resolve().parents[2] / "shared/assets/flan-t5-small"
MODES = [("fid", "official"), ("fid", "separate"), ("ipa", "official"), ("none", "official")]
N = 10  # questions per fake split
K = 4
T = 16  # max_target_length


def load_tokenizer():
    if T5_DIR.is_dir():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(T5_DIR)
    texts = [q["input"] + " " + " ".join(str(v) for item in q["profile"] for v in item.values()) + " " + out
             for task in TASKS for q, out in fake_examples(task, 20, seed=9)]
    return build_tokenizer(texts, vocab_size=2000)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tokens")


@pytest.fixture(scope="module")
def split(root):
    """``split(task)``: the store and bm25 rankings of a fake dev split, written once per module."""
    made: dict = {}

    def get(task: str):
        if task not in made:
            made[task] = open_split(root, task)
        return made[task]

    return get


def open_split(root: Path, task: str, split: str = "dev", n: int = N, seed: int = 3, **options):
    q, o = write_fake_split(root / f"data-{seed}", task, split, n, seed=seed,
                            **{"profile_size": (0, 6), "words": (5, 40), **options})
    store = LaMPStore.open(task, q, o, cache_dir=root / "cache", progress=False)
    return store, get_rankings(store, "bm25", cache_dir=root / "cache", progress=False)


def today(store, rankings, tok, mode: str, layout: str, max_length: int, batch: int = 3) -> list[dict]:
    """The batches of the current on-the-fly path, in file order."""
    ds = PassageDataset(store, rankings, PromptBuilder(store.task, tok, max_length, mode=mode, layout=layout),
                        K, mode)
    collate = PassageCollator(tok, max_length, T)
    return [collate([ds[i] for i in range(s, min(s + batch, len(ds)))]) for s in range(0, len(ds), batch)]


def cached(dataset: TokenDataset, tok, batch: int = 3) -> list[dict]:
    collate = PadCollator.for_tokenizer(tok)
    return [collate([dataset[i] for i in range(s, min(s + batch, len(dataset)))])
            for s in range(0, len(dataset), batch)]


def assert_same(expected: list[dict], got: list[dict]) -> None:
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        assert list(a) == list(b)
        for key in a:
            if torch.is_tensor(a[key]):
                assert b[key].dtype == a[key].dtype and b[key].shape == a[key].shape, key
                assert torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key


def open_cache(root: Path, store, rankings, tok, mode="fid", layout="official", max_length=48, **options):
    options = {"k": K, "max_target_length": T, "cache_dir": root / "cache", "progress": False, **options}
    return open_tokens(store, rankings, tok, mode=mode, layout=layout, max_length=max_length, **options)


# --- the same batches as today -----------------------------------------------------------------

@pytest.mark.parametrize("mode,layout", MODES)
@pytest.mark.parametrize("task", list(TASKS))
def test_batches_are_bit_identical_to_the_on_the_fly_path(root, split, tok, task, mode, layout):
    # 48 tokens: most passages are cut, some budgets retry or fall back to the bare input
    store, rankings = split(task)
    dataset = open_cache(root, store, rankings, tok, mode, layout, 48)
    assert len(dataset) == len(store) and dataset.ids == store.ids
    assert_same(today(store, rankings, tok, mode, layout, 48), cached(dataset, tok))


def test_budget_retries_and_fallbacks_are_counted_at_build_time(root, split, tok):
    store, rankings = split("LaMP_4")
    for mode in ("fid", "ipa"):  # the paper's length too
        dataset = open_cache(root, store, rankings, tok, mode, max_length=512)
        assert_same(today(store, rankings, tok, mode, "official", 512), cached(dataset, tok))
    for mode in ("fid", "ipa"):
        builder = PromptBuilder(store.task, tok, 24, mode=mode)
        ds = PassageDataset(store, rankings, builder, K, mode)
        expected = [ds[i] for i in range(len(ds))]
        dataset = open_cache(root, store, rankings, tok, mode, max_length=24)
        assert dataset.retries == sum(e["retries"] for e in expected) > 0
        assert dataset.fallbacks == sum(e["fallbacks"] for e in expected) > 0
        assert [dataset[i]["retries"] for i in range(len(dataset))] == [e["retries"] for e in expected]


def test_a_split_without_outputs_has_no_labels(root, tok):
    store, rankings = open_split(root, "LaMP_3", split="test")
    dataset = open_cache(root, store, rankings, tok, "ipa")
    batches = cached(dataset, tok)
    assert dataset.targets is None and all("labels" not in b and b["targets"] is None for b in batches)
    assert_same(today(store, rankings, tok, "ipa", "official", 48), batches)


def test_left_padding_tokenizer(root, split, tok):
    left = copy.deepcopy(tok)
    left.padding_side = "left"
    store, rankings = split("LaMP_5")
    dataset = open_cache(root, store, rankings, left, "fid", max_length=64)
    assert_same(today(store, rankings, left, "fid", "official", 64), cached(dataset, left))
    # padding_side is part of the key: the right-padded cache is another folder
    assert dataset.directory != open_cache(root, store, rankings, tok, "fid", max_length=64).directory


def test_loader_with_workers_and_a_sampler(root, split, tok):
    store, rankings = split("LaMP_2")
    dataset = open_cache(root, store, rankings, tok)
    sampler = LengthGroupedBatchSampler(SequentialSampler(dataset), 3, lengths=dataset.longest())
    plain = [PadCollator.for_tokenizer(tok)([dataset[i] for i in b]) for b in sampler]
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=PadCollator.for_tokenizer(tok),
                        num_workers=1)
    assert_same(plain, list(loader))


# --- keyed and verified ------------------------------------------------------------------------

@pytest.fixture
def base(tmp_path, tok):
    store, rankings = open_split(tmp_path, "LaMP_3")
    first = open_cache(tmp_path, store, rankings, tok)
    assert first.built
    return tmp_path, store, rankings, first


def test_the_same_setting_is_read_back(base, tok):
    root, store, rankings, first = base
    tok(["a long text " * 50], max_length=8, truncation=True, padding="longest")  # leaves backend state
    again = open_cache(root, store, rankings, tok)
    assert not again.built and again.directory == first.directory
    reloaded = load_tokenizer()  # the same content loaded again
    assert tokenizer_identity(reloaded) == tokenizer_identity(tok)
    assert not open_cache(root, store, rankings, reloaded).built
    tok.save_pretrained(root / "copy")  # a copied tokenizer folder: same content, same cache
    from transformers import AutoTokenizer

    assert not open_cache(root, store, rankings, AutoTokenizer.from_pretrained(root / "copy")).built


def test_a_tokenizer_without_a_backend_is_keyed_by_its_files(tmp_path):
    from transformers import AutoTokenizer, ByT5Tokenizer

    with pytest.raises(LaMPError, match="cannot identify the tokenizer"):
        tokenizer_identity(ByT5Tokenizer())  # no files, no backend: never a guessed key
    ByT5Tokenizer().save_pretrained(tmp_path / "a")
    ByT5Tokenizer(extra_ids=10).save_pretrained(tmp_path / "b")
    a, a2, b = (tokenizer_identity(AutoTokenizer.from_pretrained(tmp_path / n)) for n in ("a", "a", "b"))
    assert a == a2 and a["content"] != b["content"]


def test_settings_that_cannot_matter_do_not_rebuild(base, tok):
    root, store, rankings, _ = base
    none = open_cache(root, store, rankings, tok, "none")
    assert none.built
    for same in (open_cache(root, store, rankings, tok, "none", k=1),
                 open_cache(root, store, None, tok, "fid"),
                 open_cache(root, store, rankings, tok, "fid", k=0),
                 open_cache(root, store, rankings, tok, "none", layout="separate")):
        assert not same.built and same.directory == none.directory
    ipa = open_cache(root, store, rankings, tok, "ipa")
    assert not open_cache(root, store, rankings, tok, "ipa", layout="separate").built
    assert ipa.directory != none.directory


CHANGES = {
    "k": lambda r, s, rk, tok: dict(k=K - 1),
    "mode": lambda r, s, rk, tok: dict(mode="ipa"),
    "layout": lambda r, s, rk, tok: dict(layout="separate"),
    "max_length": lambda r, s, rk, tok: dict(max_length=49),
    "max_target_length": lambda r, s, rk, tok: dict(max_target_length=T + 1),
    "rankings": lambda r, s, rk, tok: dict(rankings=get_rankings(s, "random", cache_dir=r / "cache", seed=5,
                                                                 progress=False)),
    "tokenizer": lambda r, s, rk, tok: dict(tok=added_token(tok)),
    "store": lambda r, s, rk, tok: dict(store=open_split(r, "LaMP_3", seed=4)[0]),
}


def added_token(tok):
    other = copy.deepcopy(tok)
    other.add_tokens(["zzqx"])
    return other


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_setting_rebuilds(base, tok, change):
    root, store, rankings, first = base
    args = dict(store=store, rankings=rankings, tok=tok)
    args.update(CHANGES[change](root, store, rankings, tok))
    store2, rankings2, tok2 = args.pop("store"), args.pop("rankings"), args.pop("tok")
    if change == "store":
        rankings2 = get_rankings(store2, "bm25", cache_dir=root / "cache", progress=False)
    changed = open_cache(root, store2, rankings2, tok2, **args)
    assert changed.built and changed.directory != first.directory
    assert not open_cache(root, store, rankings, tok).built  # the first setting is still there


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated tokens": lambda d: (d / "passage_tokens.bin").write_bytes(
        (d / "passage_tokens.bin").read_bytes()[:-4]),
    "one token flipped": lambda d: flip_byte(d / "passage_tokens.bin"),
    "target flipped": lambda d: flip_byte(d / "target_tokens.bin"),
    "counts missing": lambda d: (d / "counts.npy").unlink(),
    "meta garbage": lambda d: (d / "meta.json").write_text("{not json"),
    "meta of another key": lambda d: (d / "meta.json").write_text(
        json.dumps({**json.loads((d / "meta.json").read_text()), "key": {"format": 0}})),
    "offsets edited": lambda d: np.save(d / "passage_offsets.npy",
                                        np.load(d / "passage_offsets.npy") // 2),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_cache_is_rebuilt(base, tok, damage, capsys):
    root, store, rankings, first = base
    expected = cached(first, tok)
    DAMAGE[damage](first.directory)
    again = open_cache(root, store, rankings, tok)
    assert again.built
    assert "token cache" in capsys.readouterr().err
    assert_same(expected, cached(again, tok))
    assert not open_cache(root, store, rankings, tok).built


def test_a_half_written_build_is_ignored_and_cleaned(base, tok):
    root, store, rankings, first = base
    directory = first.directory
    dead = directory.with_name(f".{directory.name}.tmp-99999-deadbeef")
    shutil.copytree(directory, dead)
    shutil.rmtree(directory)
    again = open_cache(root, store, rankings, tok)
    assert again.built and not dead.exists()


def test_workers_build_the_same_files(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(tokens, "_CHUNK", 3)  # several chunks from a small file
    store, rankings = open_split(tmp_path, "LaMP_4", n=14)
    one = open_cache(tmp_path / "a", store, rankings, tok, "fid", workers=0)
    two = open_cache(tmp_path / "b", store, rankings, tok, "fid", workers=2)
    assert two.built and one.meta["files"] == two.meta["files"]


@pytest.mark.parametrize("workers", [0, 2])
def test_an_error_while_building_is_one_line_and_leaves_nothing(tmp_path, tok, monkeypatch, workers):
    monkeypatch.setattr(tokens, "_CHUNK", 3)
    store, rankings = open_split(tmp_path, "LaMP_3", n=14)
    real = PromptBuilder.passages

    def failing(self, inp, items):
        if inp == store[8].input:
            raise LaMPDataError(store.questions_path, "a bad item", record_id=store.ids[8], field="text")
        return real(self, inp, items)

    monkeypatch.setattr(PromptBuilder, "passages", failing)
    with pytest.raises(LaMPError) as err:
        open_cache(tmp_path, store, rankings, tok, workers=workers)
    assert str(err.value) == f"{store.questions_path}, record id '{store.ids[8]}', field 'text': a bad item"
    assert list((tmp_path / "cache" / "tokens").iterdir()) == [] or \
        all(p.name.endswith(".lock") for p in (tmp_path / "cache" / "tokens").iterdir())


def test_bad_options_and_rankings(tmp_path, tok):
    store, rankings = open_split(tmp_path, "LaMP_3")
    for options in (dict(k=-1), dict(workers=-1), dict(max_target_length=0), dict(mode="both"),
                    dict(layout="stacked"), dict(max_length=0)):
        with pytest.raises(LaMPError):
            open_cache(tmp_path, store, rankings, tok, **options)
    partial = {i: rankings[i] for i in store.ids[1:]}
    with pytest.raises(LaMPDataError, match=f"record id '{store.ids[0]}'"):
        open_cache(tmp_path, store, partial, tok)


# --- length-grouped batches ----------------------------------------------------------------------

LENGTHS = [5, 30, 7, 30, 1, 12, 12, 40, 3, 9, 22, 18, 2, 35]


def shuffled(data, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> DistributedSampler:
    """A shuffling index sampler whose order depends only on (seed, epoch)."""
    return DistributedSampler(data, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)


def test_evaluation_batches_are_sorted_longest_first():
    sampler = LengthGroupedBatchSampler(SequentialSampler(LENGTHS), 4, lengths=LENGTHS)
    batches = list(sampler)
    flat = [i for b in batches for i in b]
    assert flat == [7, 13, 1, 3, 10, 11, 5, 6, 9, 2, 0, 8, 12, 4]  # stable: ties keep file order
    assert [len(b) for b in batches] == [4, 4, 4, 2] and len(sampler) == 4
    assert list(sampler) == batches


def test_training_batches_depend_only_on_seed_and_epoch():
    def draw(seed, epoch, **options):
        s = LengthGroupedBatchSampler(shuffled(LENGTHS, seed), 3, lengths=LENGTHS, group_batches=2, **options)
        s.set_epoch(epoch)
        return list(s), len(s)

    first, n = draw(0, 0)
    assert first == draw(0, 0)[0] and first != draw(0, 1)[0] and first != draw(1, 0)[0]
    assert sorted(i for b in first for i in b) == list(range(len(LENGTHS))) and n == len(first) == 5
    for g in range(0, len(first), 2):  # each group of 2 batches is sorted by length, longest first
        run = [LENGTHS[i] for b in first[g:g + 2] for i in b]
        assert run == sorted(run, reverse=True)
    dropped, n = draw(0, 0, drop_last=True)
    assert [len(b) for b in dropped] == [3] * 4 and n == 4


def test_replicas_share_the_batches():
    shards = [list(LengthGroupedBatchSampler(shuffled(LENGTHS, 0, 2, rank), 3, lengths=LENGTHS))
              for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 3
    assert {i for s in shards for b in s for i in b} == set(range(len(LENGTHS)))
    with pytest.raises(LaMPError):
        LengthGroupedBatchSampler(LENGTHS, 3, lengths=LENGTHS, group_batches=0)


def test_lightning_drives_the_sampler_in_fit_and_predict(root, split, tok):
    from lightning.pytorch import LightningDataModule, LightningModule, Trainer

    store, rankings = split("LaMP_2")
    dataset = open_cache(root, store, rankings, tok)
    collate = PadCollator.for_tokenizer(tok)

    class Data(LightningDataModule):
        def train_dataloader(self):
            sampler = LengthGroupedBatchSampler(shuffled(dataset, 3), 3, lengths=dataset.longest(),
                                                group_batches=2)
            return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)

        def predict_dataloader(self):
            sampler = LengthGroupedBatchSampler(SequentialSampler(dataset), 4, lengths=dataset.longest())
            return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)

    class Recorder(LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: dict[int, list] = {}

        def training_step(self, batch, batch_idx):
            self.seen.setdefault(self.current_epoch, []).append(list(batch["ids"]))
            return (self.w * batch["input_ids"].float().mean()).sum()

        def predict_step(self, batch, batch_idx):
            return list(batch["ids"])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Recorder()
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=Data())
    for epoch in (0, 1):  # Lightning set the index sampler's epoch: each epoch is its (seed, epoch) draw
        alone = LengthGroupedBatchSampler(shuffled(dataset, 3), 3, lengths=dataset.longest(), group_batches=2)
        alone.set_epoch(epoch)
        assert model.seen[epoch] == [[dataset.ids[i] for i in b] for b in alone]
    assert model.seen[0] != model.seen[1]
    predicted = [i for b in trainer.predict(model, datamodule=Data()) for i in b]
    order = np.argsort(-dataset.longest(), kind="stable")
    assert predicted == [dataset.ids[i] for i in order]


def test_padding_fraction_counts_the_padded_slots_of_the_batches(root, tok):
    store, rankings = open_split(root, "LaMP_7", n=24, profile_size=(0, 8), words=(3, 60))
    dataset = open_cache(root, store, rankings, tok, max_length=128)
    collate = PadCollator.for_tokenizer(tok)
    for sampler in (LengthGroupedBatchSampler(SequentialSampler(dataset), 4, lengths=dataset.longest()),
                    LengthGroupedBatchSampler(shuffled(dataset), 4, lengths=np.zeros(len(dataset)))):
        masks = [collate([dataset[i] for i in b])["attention_mask"] for b in sampler]
        expected = 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
        assert padding_fraction(dataset, list(sampler)) == expected


# --- the prepared GPU script (benchmarks/gpu_check.py; it only measures on CUDA) --------------------

@pytest.fixture(scope="module")
def gpu_check():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    spec.loader.exec_module(module)  # the script sets TOKENIZERS_PARALLELISM: not for other tests
    if before is None:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    return module


def test_gpu_check_skips_cleanly_without_cuda(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    assert "no CUDA device here: skipped" in capsys.readouterr().out


@pytest.mark.parametrize("shape", ["FLAN_T5_BASE", "TINY"])
def test_gpu_check_flops_count_every_weight_once(gpu_check, shape):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(**getattr(gpu_check, shape))
    with torch.device("meta"):
        model = T5ForConditionalGeneration(config)
    flops = gpu_check.train_flops_per_example(config, k=8, L=512, T=32)
    embedding = config.vocab_size * config.d_model  # a lookup: no FLOPs
    position_bias = 2 * config.relative_attention_num_buckets * config.num_heads  # idem
    counted = flops["params_encoder"] + flops["params_decoder"] + position_bias  # LM head included
    # transformers 5 ties the LM head to the embedding of a T5 built from a config (a transformers 5 default)
    tied = model.lm_head.weight is model.shared.weight
    assert counted + (0 if tied else embedding) == sum(p.numel() for p in model.parameters())
    if shape == "FLAN_T5_BASE":
        assert counted + embedding == 247_577_856  # the released google/flan-t5-base (separate LM head)
