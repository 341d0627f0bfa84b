"""The LaMP DataModule: LaMP files -> cached rankings -> φp passages -> ``[B, k, L]`` token batches."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from lamp_fid.data.paths import default_data_dir, split_paths
from lamp_fid.data.sampler import ResumableLoader, ResumableSampler
from lamp_fid.data.store import LaMPStore
from lamp_fid.errors import LaMPError
from lamp_fid.pplug import BGE_INSTRUCTION, check_pooling
from lamp_fid.prompts import PromptBuilder
from lamp_fid.retrieval.rank import get_rankings
from lamp_fid.setting import Layout, Mode, RetrieverName, Split, passages_are_bare, split_mode
from lamp_fid.tasks import get_task


class PassageDataset(Dataset):
    """Example i -> ``{"id", "passages": [str], "target": str | None}`` (rankings read from the cache)."""

    def __init__(self, store, rankings, builder, k: int, mode: str):
        self.store, self.rankings, self.builder, self.k, self.mode = store, rankings, builder, k, mode

    def __len__(self) -> int:
        return len(self.store)

    def items_of(self, example) -> list[dict]:
        """The top-k profile items of ``example`` in rank order (none for the baseline)."""
        if self.rankings is None or passages_are_bare(self.mode, k=self.k):
            return []
        positions = self.rankings[example.id][: self.k]
        return [example.profile[int(p)] for p in positions]

    def __getitem__(self, i: int) -> dict:
        example = self.store[i]
        built = self.builder.passages(example.input, self.items_of(example))
        return {"id": example.id, "passages": built.texts, "fallbacks": built.fallbacks,
                "retries": built.retries, "target": example.output}


class PassageCollator:
    """Tokenizes a list of examples into the FiD batch contract.

    ``input_ids``/``attention_mask`` are ``[B, n, L]`` with n the most passages of any example in the
    batch (at most k, k+1 in the separate layout); missing passages are all-zero mask rows, which the
    decoder never attends to. Passages are padded to the longest passage of the batch and cut on the
    right at ``max_length`` (the official tokenization). ``labels`` are ``[B, T]`` padded with -100.
    """

    def __init__(self, tokenizer, max_length: int, max_target_length: int):
        self.tokenizer, self.max_length, self.max_target_length = tokenizer, max_length, max_target_length

    def __call__(self, examples: list[dict]) -> dict:
        flat = [p for ex in examples for p in ex["passages"]]
        enc = self.tokenizer(flat, max_length=self.max_length, truncation=True)
        passages = iter([{"input_ids": ids, "attention_mask": mask}
                         for ids, mask in zip(enc["input_ids"], enc["attention_mask"])])
        B, n = len(examples), max(len(ex["passages"]) for ex in examples)
        rows = []
        for ex in examples:  # n rows per example: its passages, then empty rows (all-zero masks once padded)
            rows += [next(passages) for _ in ex["passages"]]
            rows += [{"input_ids": [], "attention_mask": []}] * (n - len(ex["passages"]))
        padded = self.tokenizer.pad(rows, padding="longest", return_tensors="pt")  # [B*n, L]
        L = padded["input_ids"].shape[-1]
        batch = {"input_ids": padded["input_ids"].reshape(B, n, L),  # [B*n, L] -> [B, n, L]
                 "attention_mask": padded["attention_mask"].reshape(B, n, L),
                 "ids": [ex["id"] for ex in examples], "targets": None,
                 "fallbacks": sum(ex.get("fallbacks", 0) for ex in examples),
                 "retries": sum(ex.get("retries", 0) for ex in examples)}
        targets = [ex["target"] for ex in examples]
        if all(t is not None for t in targets):
            lab = self.tokenizer(targets, max_length=self.max_target_length, truncation=True,
                                 padding="longest", return_tensors="pt")
            labels = lab["input_ids"].masked_fill(lab["attention_mask"] == 0, -100)
            batch["labels"], batch["targets"] = labels, targets
        return batch


class LaMPDataModule(LightningDataModule):
    """LaMP data for FiD, IPA, the non-personalized baseline and the PPlug modes.

    ``prepare_data`` (one process) downloads missing files, builds the compact on-disk store and ranks
    every profile once (cached on disk); ``setup`` only reads those caches, so changing ``k`` or
    ``mode`` never re-ranks. In the PPlug modes ``prepare_data`` also embeds every history item once
    with the frozen user encoder (:func:`lamp_fid.data.history.open_history`, cached in cache_dir),
    and the batches gain ``query_ids``, ``query_mask``, ``hist``, ``hist_mask`` and ``index``
    (:mod:`lamp_fid.data.pplug_batch`).
    """

    def __init__(
        self,
        task: str = "LaMP_2",
        data_dir: Path | None = None,
        time_split: bool = False,
        download: bool = True,
        retriever: RetrieverName = "bm25",
        k: int = 1,
        mode: Mode = "fid",
        layout: Layout = "official",
        tokenizer: str = "google/flan-t5-base",
        max_length: int = 512,
        max_target_length: int = 128,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_split: Split = "train",
        val_split: Split = "dev",
        test_split: Split = "dev",
        predict_split: Split = "test",
        encoder: str = "facebook/contriever",
        use_date: bool = False,
        seed: int = 0,
        cache_dir: Path | None = None,
        token_cache: bool = True,
        group_by_length: Literal["none", "eval", "all"] = "none",
        user_encoder: str = "BAAI/bge-base-en-v1.5",
        user_pooling: Literal["cls", "mean"] = "cls",
        history_outputs: bool = True,
        history_max_items: int | None = None,
        history_dropout: float = 0.0,
        query_max_length: int = 512,
        query_instruction: str = BGE_INSTRUCTION,
    ):
        """
        Args:
            task: LaMP task (LaMP_1 .. LaMP_7; LaMP_2N is the deprecated news task; LaMP-3 spelling works).
            data_dir: root of the LaMP files in the official download layout (default: lamp-fid's cache dir).
            time_split: use the time-based split instead of the user-based one.
            download: download missing files from the official URLs in prepare_data.
            retriever: how profile items are ranked against the query φq(x): none, random, recency,
                bm25 (official default) or dense (Contriever-style encoder, see --data.encoder).
            k: number of profile items given to the model (FiD: one passage each; IPA: all in one prompt).
            mode: fid (one passage per item), ipa (one prompt with all k items), none (the bare input,
                the non-personalized baseline), pplug (the bare input plus PPlug's two soft tokens, a
                user embedding of the whole history; retriever and k unused), pplug+ipa or pplug+fid
                (the ipa/fid passages plus the soft tokens).
            layout: FiD passage layout: official (each passage = φp of the input with one item) or
                separate (the input alone in one passage, each item's piece alone in the others; for tiny
                models trained from scratch, see the demo).
            tokenizer: tokenizer name or path; linked to --model.model_name_or_path by the CLI.
            max_length: model input length in tokens (the prompt budget; the paper uses 512).
            max_target_length: target length in tokens.
            batch_size: training batch size (examples, not passages).
            eval_batch_size: batch size for validation/test/predict (default: batch_size).
            num_workers: DataLoader worker processes.
            train_split: split used for training.
            val_split: split used for validation.
            test_split: split used by `test` (it needs gold outputs; the LaMP test split has none).
            predict_split: split used by `predict`.
            encoder: dense retriever encoder (HF name or local path).
            use_date: append " date: <date>" to item texts for ranking.
            seed: seed of the random retriever.
            cache_dir: where compact stores and rankings are cached (default: lamp-fid's cache dir).
            token_cache: build and tokenize every example's passages once per setting, kept on disk
                under cache_dir/tokens (see lamp_fid.data.tokens), so each epoch only slices and pads
                ids; the batches are bit-identical to the on-the-fly path (false), which rebuilds and
                tokenizes every passage in every epoch.
            group_by_length: batches of examples of similar length, so that less of each batch is
                padding (needs token_cache): none (file order for evaluation, a seeded shuffle for
                training), eval (validation/test/predict batches sorted by length, longest first:
                predictions and metrics are the same, files keep the dataset's order) or all (also
                training: the seeded shuffle cut into groups of 50 batches, each sorted by length;
                deterministic per seed and epoch, resumable).
            user_encoder: PPlug modes: the frozen history encoder Enc_his (HF name or local folder; the
                model's trained query encoder is a copy of it): BAAI/bge-base-en-v1.5 as in the paper.
                Linked to --model.user_encoder by the CLI.
            user_pooling: PPlug modes: sentence vector of the user encoder: cls (BGE: the first token's
                last hidden state) or mean (sentence-transformers models); L2-normalised either way.
                Linked to --model.user_pooling by the CLI.
            history_outputs: PPlug modes: embed each history item with its output (the paper's format,
                e.g. "text: ... score: 5") or without (false: the released code's text).
            history_max_items: PPlug modes: use only the last this many items of each profile (null:
                all, the paper; the released code keeps 512).
            history_dropout: PPlug modes, training only: probability per example and epoch of dropping a
                random 1 item to 50 % of its history (the released code's augmentation, drawn on the fly;
                deterministic per seed, epoch and example). 0 = off.
            query_max_length: PPlug modes: tokens of the user encoder's query (instruction + φq(x)).
            query_instruction: PPlug modes: the text put before each query for the user encoder;
                linked from --model.query_instruction by the CLI.
        """
        super().__init__()
        self.save_hyperparameters()
        try:
            self.task = get_task(task)
        except ValueError as err:
            raise LaMPError(f"task: {err}") from None
        for name, value, least in (("k", k, 0), ("batch_size", batch_size, 1), ("max_length", max_length, 1),
                                   ("max_target_length", max_target_length, 1),
                                   ("num_workers", num_workers, 0)):
            if value < least:
                raise LaMPError(f"{name} must be >= {least}, got {value}")
        if group_by_length not in ("none", "eval", "all"):
            raise LaMPError(f"group_by_length must be none, eval or all, got {group_by_length!r}")
        if group_by_length != "none" and not token_cache:
            raise LaMPError(f"group_by_length {group_by_length} needs the token cache's lengths: "
                            "set --data.token_cache true (or --data.group_by_length none)")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise LaMPError(f"eval_batch_size must be >= 1 (or null: batch_size), got {eval_batch_size}")
        self.passage_mode, self.uses_pplug = split_mode(mode)
        if self.uses_pplug:
            check_pooling(user_pooling)
            if not 0 <= history_dropout <= 1:
                raise LaMPError(f"history_dropout must be in [0, 1], got {history_dropout}")
            if history_max_items is not None and history_max_items < 1:
                raise LaMPError(f"history_max_items must be >= 1 (or null: all), got {history_max_items}")
            if query_max_length < 1:
                raise LaMPError(f"query_max_length must be >= 1, got {query_max_length}")
        self._tokenizer = None
        self._user_tokenizer = None
        self.datasets: dict[str, PassageDataset] = {}

    # --- pieces ---------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            # lazy: transformers' auto classes cost seconds, and `lamp-fid fit --help` imports this module
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.hparams.tokenizer)
        return self._tokenizer

    @property
    def user_tokenizer(self):
        """The user encoder's tokenizer (PPlug modes): a one-line LaMPError if it cannot be loaded."""
        if self._user_tokenizer is None:
            from lamp_fid.pplug import load_tokenizer

            self._user_tokenizer = load_tokenizer(self.hparams.user_encoder)
        return self._user_tokenizer

    def _data_dir(self) -> Path:
        return Path(self.hparams.data_dir) if self.hparams.data_dir else default_data_dir()

    def _paths(self, split: str) -> tuple[Path, Path | None]:
        q, o = split_paths(self._data_dir(), self.task, split, time_split=self.hparams.time_split)
        return Path(q), (Path(o) if o is not None and Path(o).exists() else None)

    def _splits(self, stage: str | None) -> list[str]:
        h = self.hparams
        by_stage = {"fit": [h.train_split, h.val_split], "validate": [h.val_split],
                    "test": [h.test_split], "predict": [h.predict_split]}
        if stage is None:
            return sorted(set(s for v in by_stage.values() for s in v))
        return by_stage[stage]

    def _labeled(self, stage: str | None) -> set[str]:
        """The splits ``stage`` scores against gold outputs (fit: train and val; not predict)."""
        h = self.hparams
        return {"fit": {h.train_split, h.val_split}, "validate": {h.val_split},
                "test": {h.test_split}}.get(stage, set())

    def _check_outputs(self, split: str, stage: str | None) -> None:
        """Refuse a split that ``stage`` scores against gold outputs when it has none."""
        if split not in self._labeled(stage) or self._paths(split)[1] is not None:
            return
        q, o = split_paths(self._data_dir(), self.task, split, time_split=self.hparams.time_split)
        if o is not None:
            raise LaMPError(f"{o}: no such file, and {stage} needs the gold outputs of the {split} split "
                            f"(run `lamp-fid download --task {self.task.name} --split {split}`)")
        options = [f"--data.{name}_split" for name in ("train", "val", "test")
                   if self.hparams[f"{name}_split"] == split]
        raise LaMPError(f"{q}: the LaMP test split has no gold outputs, and {stage} needs them: choose a "
                        f"labeled split with {' / '.join(options)} (`lamp-fid predict` needs none)")

    def _store(self, split: str):
        q, o = self._paths(split)
        if not q.exists():
            raise LaMPError(f"{q}: no such file (run `lamp-fid download --task {self.task.name} "
                            f"--split {split}` or set --data.data_dir)")
        store = LaMPStore.open(self.task, q, o, cache_dir=self.hparams.cache_dir,
                               check_dates=self.hparams.retriever == "recency")
        if len(store) == 0:
            raise LaMPError(f"{q}: the {split} split is empty (no questions)")
        return store

    def _rankings(self, store):
        h = self.hparams
        if passages_are_bare(h.mode, h.retriever, h.k):
            return None
        return get_rankings(store, h.retriever, cache_dir=h.cache_dir, use_date=h.use_date,
                            encoder=h.encoder, seed=h.seed)

    def builder(self):
        """The φp passage builder for this module's task, mode and layout."""
        h = self.hparams
        return PromptBuilder(self.task, self.tokenizer, h.max_length, mode=self.passage_mode, layout=h.layout)

    # --- Lightning hooks ------------------------------------------------------------------
    def _current_stage(self) -> str | None:
        """The running trainer's stage (fit/validate/test/predict), or None outside a trainer."""
        fn = getattr(getattr(getattr(self, "trainer", None), "state", None), "fn", None)
        return getattr(fn, "value", None)

    def prepare_data(self) -> None:
        h = self.hparams
        stage = self._current_stage()
        for split in self._splits(stage):
            q, o = self._paths(split)
            if not q.exists() and self.task.name == "LaMP_6":
                # the release holds only Avocado message ids: training on them would be silent garbage
                raise LaMPError(f"{q}: no such file; LaMP_6 is built from your own Avocado corpus "
                                "with `lamp-fid avocado` (see README)")
            no_outputs = (o is None and split != "test" and split in self._labeled(stage)
                          and self.task.name != "LaMP_6")  # LaMP_6 files come from `lamp-fid avocado`
            if (not q.exists() or no_outputs) and h.download:
                # imported on use: the network code is only needed for missing files
                from lamp_fid.data.download import download

                download(self.task.name, split, time_split=h.time_split, data_dir=self._data_dir())
            self._check_outputs(split, stage)
            store = self._store(split)
            self._rankings(store)  # builds the store and the ranking cache once
            if self.uses_pplug:
                self.user_tokenizer  # noqa: B018 (a folder without a tokenizer stops here, not in the cache)
                self._history(store)  # embeds the history items once (cached)

    def _history(self, store):
        """The frozen history embeddings of ``store`` (PPlug modes), from the cache or embedded once."""
        from lamp_fid.data.history import open_history

        h = self.hparams
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        return open_history(store, h.user_encoder, with_outputs=h.history_outputs, pooling=h.user_pooling,
                            device=str(device), cache_dir=h.cache_dir,
                            progress=bool(trainer is None or getattr(trainer, "is_global_zero", True)))

    def _with_pplug(self, dataset, store):
        """``dataset`` wrapped with each example's query tokens and history embeddings (PPlug modes)."""
        from lamp_fid.data.pplug_batch import PPlugDataset, tokenize_queries

        if not self.uses_pplug:
            return dataset
        h = self.hparams
        ids, queries = tokenize_queries(store, self.user_tokenizer, h.query_instruction, h.query_max_length)
        return PPlugDataset(dataset, ids, queries, self._history(store), h.history_max_items,
                            source=str(getattr(store, "questions_path", "<questions>")))

    def setup(self, stage: str | None = None) -> None:
        builder = self.builder()
        for split in self._splits(stage):
            self._check_outputs(split, stage)
            if split not in self.datasets:
                store = self._store(split)
                if self.hparams.token_cache:
                    dataset = self._tokens(store)
                else:
                    dataset = PassageDataset(store, self._rankings(store), builder, self.hparams.k,
                                             self.passage_mode)
                self.datasets[split] = self._with_pplug(dataset, store)

    def _tokens(self, store):
        """The split's passages built and tokenized once (a :class:`~lamp_fid.data.tokens.TokenDataset`)."""
        from lamp_fid.data.tokens import open_tokens

        h = self.hparams
        return open_tokens(store, self._rankings(store), self.tokenizer, k=h.k, mode=self.passage_mode,
                           layout=h.layout,
                           max_length=h.max_length, max_target_length=h.max_target_length,
                           cache_dir=h.cache_dir)

    def _loader(self, split: str, train: bool) -> DataLoader:
        """Training: a ``ResumableLoader`` whose order depends only on the seed and the epoch (and the
        rank under DDP), restored mid-epoch on resume. Evaluation: dataset order, or sorted by length
        (``group_by_length``). Every loader draws its workers' base seed from its own generator, never
        from the global RNG that dropout uses."""
        from torch.utils.data import SequentialSampler

        from lamp_fid.data.tokens import LengthGroupedBatchSampler, LengthGroupedSampler, PadCollator

        h = self.hparams
        dataset = self.datasets[split]
        collate = PadCollator.for_tokenizer(self.tokenizer) if h.token_cache else \
            PassageCollator(self.tokenizer, h.max_length, h.max_target_length)
        if self.uses_pplug:
            from lamp_fid.data.pplug_batch import PPlugCollator

            collate = PPlugCollator(collate, self.user_tokenizer.pad_token_id or 0, self._history_dim(dataset))
        kwargs = dict(
            batch_size=h.batch_size if train else (h.eval_batch_size or h.batch_size),
            num_workers=h.num_workers,
            persistent_workers=h.num_workers > 0,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(0),
        )
        if not train and h.group_by_length == "none":
            return DataLoader(dataset, shuffle=False, **kwargs)
        if not train:  # the whole split sorted by length; predictions are keyed by id
            batches = LengthGroupedBatchSampler(SequentialSampler(dataset), kwargs.pop("batch_size"),
                                                lengths=dataset.longest())
            return DataLoader(dataset, batch_sampler=batches, **kwargs)
        trainer = self.trainer
        sampler_kwargs = dict(
            num_replicas=trainer.world_size if trainer else 1, rank=trainer.global_rank if trainer else 0,
            shuffle=True, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))  # the seed_everything seed,
        # which Lightning's own distributed sampler uses too
        if h.group_by_length == "all":
            sampler = LengthGroupedSampler(dataset, lengths=dataset.longest(), batch_size=h.batch_size,
                                           **sampler_kwargs)
        else:
            sampler = ResumableSampler(dataset, **sampler_kwargs)
        sampler.set_epoch(trainer.current_epoch if trainer else 0)  # the first iteration may precede set_epoch
        return ResumableLoader(self.datasets[split], sampler=sampler, trained_batches=self._trained_batches,
                               **kwargs)

    def _history_dim(self, dataset) -> int:
        """d_enc of the history embeddings (the encoder config's hidden size for a file without items)."""
        dim = dataset.history.dim
        if dim:
            return dim
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(self.hparams.user_encoder).hidden_size)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """PPlug's history dropout on training batches (see :func:`~lamp_fid.data.pplug_batch.apply_history_dropout`):
        drawn by (the fit's seed, the epoch, the example's index), so a resume repeats it."""
        trainer = getattr(self, "trainer", None)
        p = self.hparams.history_dropout if self.uses_pplug else 0.0
        if p > 0 and trainer is not None and trainer.training and isinstance(batch, dict):
            from lamp_fid.data.pplug_batch import apply_history_dropout

            apply_history_dropout(batch, p, int(os.environ.get("PL_GLOBAL_SEED", 0)), trainer.current_epoch)
        return batch

    def _trained_batches(self) -> int:
        """Batches of the current epoch the running fit has trained on (0 outside a fit)."""
        trainer = self.trainer
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer else 0

    def train_dataloader(self):
        return self._loader(self.hparams.train_split, True)

    def val_dataloader(self):
        return self._loader(self.hparams.val_split, False)

    def test_dataloader(self):
        return self._loader(self.hparams.test_split, False)

    def predict_dataloader(self):
        return self._loader(self.hparams.predict_split, False)
