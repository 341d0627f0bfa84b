"""The FiD LightningModule: encode each passage alone, fuse the encoder states, decode once.

IPA and the non-personalized baseline are the same module with one passage per example (k = 1), for
which the fused path is exactly the plain seq2seq forward. The PPlug modes add a
:class:`~lamp_fid.pplug.PersonaPlug` (``self.user``) whose two soft tokens :meth:`FiDModule.fuse`
puts in front of the encoder's input embeddings, so training, evaluation, generation and label
scoring all read them.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from lamp_fid.distill.collect import (STAGE_SPLIT, PassageScores, check_mode, items_of_batch, split_has_outputs,
                                      stage_split)
from lamp_fid.distill.scores import (TEACHER_FORCED, VARIANTS as SCORE_VARIANTS, Scores,
                                     passage_scores as reader_passage_scores, scores_by_item)
from lamp_fid.distributed import gather_objects, merge_rank_outputs
from lamp_fid.errors import LaMPError
from lamp_fid.metrics import score
from lamp_fid.pplug import BGE_INSTRUCTION, PersonaPlug, check_pooling, prepend_soft_tokens
from lamp_fid.setting import Mode, split_mode
from lamp_fid.tasks import get_task

#: The batch keys PPlug's user embedder reads (lamp_fid.data.pplug_batch).
USER_KEYS = ("query_ids", "query_mask", "hist", "hist_mask")

#: The paper's optimizer: AdamW, lr 5e-5, weight decay 1e-4 (the CLI's default too: `cli_default`).
PAPER_OPTIMIZER = functools.partial(torch.optim.AdamW, lr=5e-5, weight_decay=1e-4)

# Like HF Trainer (the official script's trainer): no weight decay on biases and norm weights.
_NO_DECAY = re.compile(r"bias|norm", re.IGNORECASE)


def cli_default(optimizer: functools.partial) -> dict:
    """A partial over an optimizer class as the CLI writes it (``class_path``, ``init_args``): the
    parser's default for ``--model.optimizer``, so that `--print_config` shows it and
    ``--model.optimizer.lr=...`` overrides one argument (jsonargparse cannot serialize a partial)."""
    cls = optimizer.func
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(optimizer.keywords)}


class FiDModule(LightningModule):
    """Fusion-in-Decoder over a pretrained seq2seq model (T5 / Flan-T5); IPA = one passage."""

    def __init__(
        self,
        task: str = "LaMP_2",
        model_name_or_path: str = "google/flan-t5-base",
        optimizer: OptimizerCallable = PAPER_OPTIMIZER,
        warmup_ratio: float = 0.05,
        num_beams: int = 4,
        max_new_tokens: int = 128,
        gradient_checkpointing: bool = False,
        decoding: Literal["generate", "labels"] = "generate",
        skip_empty_passages: bool = True,
        passage_scores: PassageScores = "none",
        mode: Mode = "fid",
        user_encoder: str = "BAAI/bge-base-en-v1.5",
        user_pooling: Literal["cls", "mean"] = "cls",
        query_instruction: str = BGE_INSTRUCTION,
        freeze_lm: bool = True,
        persona: Literal["every_passage", "extra_passage"] = "every_passage",
    ):
        """
        Args:
            task: LaMP task (LaMP_1 .. LaMP_7, LaMP_2N); sets the metrics and the label set.
            model_name_or_path: HF model name or local directory (weights, config and tokenizer).
            optimizer: optimizer over the model's parameters (default AdamW, lr 5e-5, weight decay 1e-4,
                the paper's; biases and norm weights get no weight decay, as in HF Trainer).
            warmup_ratio: fraction of the training steps with linear warmup; the rate then decays
                linearly to 0 at the last step.
            num_beams: beam size for generation (1 = greedy).
            max_new_tokens: most tokens generated per output.
            gradient_checkpointing: recompute activations in the backward pass (less memory, slower).
            decoding: generate (beam search, the official setting) or labels (classification and rating
                tasks only: score every label string by its log-likelihood and output the best one).
            skip_empty_passages: run the encoder only on passages that are not all padding (users with
                fewer than k items). Exact: the decoder never attends to those passages, and outputs
                and losses are bit-identical in eval (benchmarks/RESULTS.md); in training only the
                dropout draws differ. False encodes every passage.
            passage_scores: validate/test/predict also score every passage by the reader
                (docs/distill.md): fid (first decoded token, pre-softmax, Izacard & Grave), atlas
                (value-norm weighted attention of the gold target; needs outputs) or pdist (Atlas's
                perplexity distillation: log-likelihood of the gold target reading that one passage;
                needs outputs, one teacher-forced decoder pass per passage), written as
                {question id: {profile item id: score}} beside the predictions; needs --data.mode fid.
                Predictions are unchanged; none (default) scores nothing. Not collected during fit.
            mode: the data's mode (linked from --data.mode by the CLI); the PPlug modes (pplug,
                pplug+ipa, pplug+fid) build the user embedder PersonaPlug (``self.user``).
            user_encoder: PPlug modes: the query encoder Enc_input, a trained copy of the frozen history
                encoder (linked from --data.user_encoder by the CLI).
            user_pooling: PPlug modes: cls or mean pooling of the user encoder (linked from
                --data.user_pooling by the CLI).
            query_instruction: PPlug modes: text put before every query for the user encoder (BGE's
                query instruction; "" for none); the CLI passes it to --data.query_instruction.
            freeze_lm: PPlug modes: train only PPlug (I, Proj_I, Proj and the query encoder), the LM's
                parameters frozen (no gradients, not in the optimizer), as the paper does; false
                fine-tunes the LM too. The frozen LM keeps its dropout active in training (the
                released code trains the wrapper in train mode with HF's Trainer; the LM's dropout
                regularizes the soft tokens and costs nothing).
            persona: pplug+fid: how the soft tokens reach the FiD decoder: every_passage (prepended to
                every passage's input embeddings, so each passage is encoded knowing the user) or
                extra_passage (one more passage of just the two soft tokens, encoded alone and fused
                with the others, so the passages are encoded as in plain FiD). Measured on the demo's
                LaMP_3 (configs/demo_lamp3.yaml with --data.mode pplug+fid --model.freeze_lm false, a
                random 2-layer BERT user encoder with mean pooling; dev MAE / RMSE, data seeds 0 and 1):
                every_passage 0.675 / 1.065 and 0.655 / 1.017, extra_passage 0.675 / 1.039 and
                0.6525 / 1.028, plain FiD 0.685 / 1.070 and 0.655 / 1.054: no difference two seeds can
                show. Default every_passage: the paper's placement (soft tokens in front of the encoder
                input) applied to each passage, so every item is encoded in the light of the user
                embedding. Other modes always prepend (one passage).
        """
        super().__init__()
        # The optimizer is a callable from the CLI (saved in the run's config.yaml): not a plain value.
        self.save_hyperparameters(ignore=["optimizer"])
        try:
            self.task = get_task(task)
        except ValueError as err:
            raise LaMPError(f"task: {err}") from None
        for name, value in (("num_beams", num_beams), ("max_new_tokens", max_new_tokens)):
            if value < 1:
                raise LaMPError(f"{name} must be >= 1, got {value}")
        if decoding == "labels" and not self.task.labels:
            raise LaMPError(f"decoding='labels' needs a task with a label set; {self.task.name} has none")
        if not 0 <= warmup_ratio <= 1:
            raise LaMPError(f"warmup_ratio must be in [0, 1], got {warmup_ratio}")
        self.passage_mode, uses_pplug = split_mode(mode)
        if persona not in ("every_passage", "extra_passage"):
            raise LaMPError(f"persona must be every_passage or extra_passage, got {persona!r}")
        self.optimizer = optimizer
        self.model, self.tokenizer = self._load(model_name_or_path)
        self.user: PersonaPlug | None = None
        if uses_pplug:
            check_pooling(user_pooling)
            self.user = PersonaPlug(user_encoder, self.model.get_input_embeddings(), pooling=user_pooling,
                                    instruction=query_instruction)
            self.user.train()  # from_pretrained returns eval mode: the trained query encoder's dropout on
            if freeze_lm:
                self.model.requires_grad_(False)
        # from_pretrained returns eval mode, and Lightning 2.6 keeps submodules' modes: dropout on for fit
        self.model.train()
        if gradient_checkpointing:
            kwargs = {"use_reentrant": False}
            if hasattr(self.model, "activation_checkpointing_enable"):  # the name since transformers 5.23
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.predictions: dict[str, str] = {}  # id -> decoded output of the last validate/test epoch
        # (id, (output, gold, {item id: passage score} or None))
        self._step_outputs: list[tuple[str, tuple[str, str | None, dict[str, float] | None]]] = []
        self._label_ids: list[torch.Tensor] | None = None
        if passage_scores not in ("none", *SCORE_VARIANTS):
            raise LaMPError(f"passage_scores must be none, fid, atlas or pdist, got {passage_scores!r}")
        #: {question id: {profile item id: score}} of the last validate/test/predict epoch (passage_scores)
        self.item_scores: Scores | None = None
        #: {question id: [profile item id or None per passage]} of the evaluated split; setup() fills it
        #: from the LaMPDataModule (set it yourself for other data)
        self.passage_items: dict[str, list[str | None]] | None = None
        self._score_rows: list[tuple[str, dict[str, float]]] = []  # predict: (id, scores) of this rank

    @staticmethod
    def _load(path: str):
        # lazy: the auto classes cost seconds to import, and `lamp-fid fit --help` imports this module
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        try:
            # float32 master weights: transformers 5 would otherwise load the checkpoint's dtype.
            model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(path)
        except OSError as err:
            raise LaMPError(f"cannot load model {path!r}: {' '.join(str(err).split())}") from err
        return model, tokenizer

    # --- PPlug --------------------------------------------------------------------------------
    def user_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """The batch's PPlug tensors (``query_ids``, ``query_mask``, ``hist``, ``hist_mask``) as keyword
        arguments of :meth:`fuse`; empty outside the PPlug modes. A PPlug batch without them is a
        one-line LaMPError."""
        if self.user is None:
            return {}
        missing = [key for key in USER_KEYS if batch.get(key) is None]
        if missing:
            raise LaMPError(f"mode {self.hparams.mode} needs batches with {', '.join(missing)} "
                            "(the LaMPDataModule makes them in the same mode)")
        return {key: batch[key] for key in USER_KEYS}

    def soft_tokens(self, query_ids: torch.Tensor, query_mask: torch.Tensor, hist: torch.Tensor,
                    hist_mask: torch.Tensor) -> torch.Tensor:
        """PPlug's soft tokens ``[B, 2, d_model]`` (``[I'; P]``) for a batch."""
        if self.user is None:
            raise LaMPError(f"mode {self.hparams.mode} has no user embedder (use a pplug mode)")
        return self.user(query_ids, query_mask, hist, hist_mask)

    # --- FiD ----------------------------------------------------------------------------------
    def fuse(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             query_ids: torch.Tensor | None = None, query_mask: torch.Tensor | None = None,
             hist: torch.Tensor | None = None, hist_mask: torch.Tensor | None = None,
             ) -> tuple[BaseModelOutput, torch.Tensor]:
        """Encode ``[B, k, L]`` passages separately; return the fused states ``[B, k*L, d]`` and mask
        ``[B, k*L]``.

        PPlug modes (the user tensors given, see :meth:`user_inputs`): the two soft tokens are put in
        front of every passage's input embeddings (``[B, k*(2+L), d]``), or, for pplug+fid with
        ``persona: extra_passage``, encoded alone as one more passage fused first
        (``[B, 2+k*L, d]``). Empty passages stay empty (all masked, never encoded when skipped).
        """
        B, k, L = input_ids.shape
        ids = input_ids.reshape(B * k, L)  # [B, k, L] -> [B*k, L]
        mask = attention_mask.reshape(B * k, L)
        encoder = self.model.get_encoder()
        soft = persona = None
        if self.user is not None and query_ids is not None:
            soft = self.soft_tokens(query_ids, query_mask, hist, hist_mask)  # [B, 2, d]
            if self.passage_mode == "fid" and self.hparams.persona == "extra_passage":
                persona, soft = soft, None
        if soft is not None:
            embeds, mask = prepend_soft_tokens(self.model, ids, mask, soft)  # [B*k, 2+L, d], [B*k, 2+L]
            inputs, L = {"inputs_embeds": embeds}, mask.shape[1]
        else:
            inputs = {"input_ids": ids}
        keep = mask.any(-1) if self.hparams.skip_empty_passages else None
        if keep is not None and bool(keep.any()) and not bool(keep.all()):
            real = encoder(**{name: x[keep] for name, x in inputs.items()},
                           attention_mask=mask[keep]).last_hidden_state  # [n_real, L, d]
            hidden = real.new_zeros(B * k, L, real.shape[-1])
            hidden[keep] = real  # [B*k, L, d]; padding passages stay zero and masked
        else:
            hidden = encoder(**inputs, attention_mask=mask).last_hidden_state  # [B*k, L, d]
        hidden = hidden.reshape(B, k * L, hidden.shape[-1])  # [B*k, L, d] -> [B, k*L, d]
        fused_mask = mask.reshape(B, k * L)  # [B, k*L]
        if persona is not None:  # one more passage: the soft tokens alone, first
            persona_mask = fused_mask.new_ones(B, persona.shape[1])
            persona_hidden = encoder(inputs_embeds=persona.to(hidden.dtype),
                                     attention_mask=persona_mask).last_hidden_state  # [B, 2, d]
            hidden = torch.cat([persona_hidden, hidden], dim=1)  # [B, 2+k*L, d]
            fused_mask = torch.cat([persona_mask, fused_mask], dim=1)
        return BaseModelOutput(last_hidden_state=hidden), fused_mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None, **user: torch.Tensor):
        """Teacher-forced FiD forward: the HF ``Seq2SeqLMOutput`` (with ``.loss`` when labels are given);
        ``user``: the PPlug tensors (:meth:`user_inputs`)."""
        encoded, mask = self.fuse(input_ids, attention_mask, **user)
        return self.model(encoder_outputs=encoded, attention_mask=mask, labels=labels, use_cache=False)

    def decode(self, encoded: BaseModelOutput, mask: torch.Tensor) -> list[str]:
        """Outputs for fused encoder states, by beam search or by label scoring (``decoding``)."""
        if self.hparams.decoding == "labels":
            return self.score_labels(encoded, mask)
        # generate() expands the encoder outputs for beams in place: give it its own wrapper.
        out = self.model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoded.last_hidden_state),
            attention_mask=mask, num_beams=self.hparams.num_beams, max_new_tokens=self.hparams.max_new_tokens,
        )
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **user: torch.Tensor) -> list[str]:
        """Decoded outputs for a ``[B, k, L]`` batch of passages (``user``: the PPlug tensors)."""
        return self.decode(*self.fuse(input_ids, attention_mask, **user))

    def score_labels(self, encoded: BaseModelOutput, mask: torch.Tensor) -> list[str]:
        """The task label whose tokens (with ``</s>``) have the highest log-likelihood, per example."""
        if self._label_ids is None:
            encoded_labels = self.tokenizer(list(self.task.labels))["input_ids"]  # each ends with </s>
            self._label_ids = [torch.tensor(ids) for ids in encoded_labels]
        B = mask.shape[0]
        scores = []
        for ids in self._label_ids:  # one decoder pass per label: memory stays that of one batch
            labels = ids.to(mask.device).repeat(B, 1)  # [T] -> [B, T]
            logits = self.model(encoder_outputs=encoded, attention_mask=mask, labels=labels,
                                use_cache=False).logits
            logp = logits.float().log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # [B, T]
            scores.append(logp.sum(-1))
        best = torch.stack(scores, -1).argmax(-1)  # [B, n_labels] -> [B]
        return [self.task.labels[i] for i in best.tolist()]

    # --- Lightning steps ----------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self(batch["input_ids"], batch["attention_mask"], batch["labels"], **self.user_inputs(batch)).loss
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        encoded, mask = self.fuse(batch["input_ids"], batch["attention_mask"], **self.user_inputs(batch))
        if batch.get("labels") is not None:
            loss = self.model(encoder_outputs=encoded, attention_mask=mask, labels=batch["labels"],
                              use_cache=False).loss
            self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, prog_bar=True,
                     batch_size=len(batch["ids"]))
        scores = self._passage_scores(batch, encoded, mask)
        preds = self.decode(encoded, mask)
        golds = batch.get("targets") or [None] * len(preds)
        self._step_outputs.extend(zip(batch["ids"], zip(preds, golds, scores)))

    def on_validation_epoch_start(self) -> None:
        self._step_outputs = []

    def on_test_epoch_start(self) -> None:
        self._step_outputs = []

    def _dataset_ids(self, stage: str) -> list[str] | None:
        """The ids of the evaluated dataset in file order, when it lists them (a TokenDataset does):
        length-grouped evaluation batches come in another order."""
        trainer = getattr(self, "_trainer", None)
        loaders = getattr(trainer, "val_dataloaders" if stage == "val" else "test_dataloaders", None)
        ids = getattr(getattr(loaders, "dataset", None), "ids", None)
        return ids if isinstance(ids, list) else None

    def _eval_epoch_end(self, stage: str) -> None:
        """The epoch's predictions, and the official metrics of those with golds, from one gather."""
        # Every rank's (id, (output, gold)) in dataset order; DistributedSampler's padding duplicates
        # are dropped, so every rank holds the same outputs and computes the same metrics.
        merged = merge_rank_outputs(gather_objects(self._step_outputs), order=self._dataset_ids(stage))
        self._step_outputs = []
        self.predictions = {i: pred for i, (pred, _, _) in merged.items()}
        self.item_scores = {i: s for i, (_, _, s) in merged.items()} if self._collecting() else None
        golds = {i: gold for i, (_, gold, _) in merged.items() if gold is not None}
        if golds:
            values = score(self.task, [self.predictions[i] for i in golds], list(golds.values()), ids=list(golds))
            dtype = torch.float32 if self.device.type == "mps" else torch.float64  # MPS has no float64
            # equal on every rank: "max" keeps them bit-exact (sync_dist only tells Lightning so)
            self.log_dict({f"{stage}/{k}": torch.tensor(v, dtype=dtype, device=self.device)
                           for k, v in values.items()}, sync_dist=True, reduce_fx="max", prog_bar=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict, batch_idx: int) -> list[tuple[str, str]]:
        """``[(example id, decoded output), ...]`` for the batch (passage scores are kept aside)."""
        encoded, mask = self.fuse(batch["input_ids"], batch["attention_mask"], **self.user_inputs(batch))
        scores = self._passage_scores(batch, encoded, mask)
        if self._collecting():
            self._score_rows.extend(zip(batch["ids"], scores))
        return list(zip(batch["ids"], self.decode(encoded, mask)))

    def on_predict_epoch_start(self) -> None:
        self._score_rows, self.item_scores = [], None

    def on_predict_epoch_end(self) -> None:
        if self._collecting() and self.item_scores is None:  # no prediction writer gathered them
            self.gather_item_scores()

    # --- passage scores (lamp_fid.distill) ----------------------------------------------------
    def _collecting(self) -> bool:
        """Whether this epoch scores passages: ``passage_scores`` set and a validate/test/predict run."""
        trainer = getattr(self, "_trainer", None)
        fn = getattr(getattr(trainer, "state", None), "fn", None)
        return self.hparams.passage_scores != "none" and getattr(fn, "value", None) in STAGE_SPLIT

    def setup(self, stage: str) -> None:
        """With ``passage_scores``: check the data (mode fid; atlas and pdist need outputs) and take the
        evaluated split's per-passage item ids from the LaMPDataModule (set up before this hook)."""
        if self.hparams.passage_scores == "none" or stage not in STAGE_SPLIT:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "passage_items"):
            if self.passage_items is None:
                raise LaMPError("--model.passage_scores needs each passage's profile item id: use the "
                                "LaMPDataModule (or set FiDModule.passage_items)")
            return
        check_mode(datamodule.hparams.mode)
        split = stage_split(datamodule, stage)
        variant = self.hparams.passage_scores
        if variant in TEACHER_FORCED and not split_has_outputs(datamodule.datasets[split]):
            raise LaMPError(f"--model.passage_scores {variant} needs the gold outputs (teacher forcing) and the "
                            f"{split} split has none: use --model.passage_scores fid, or a split with outputs")
        self.passage_items = datamodule.passage_items(split)

    def _passage_scores(self, batch: dict, encoded: BaseModelOutput, mask: torch.Tensor
                        ) -> list[dict[str, float] | None]:
        """Each example's ``{profile item id: score}`` from the fused states generation reads (None per
        example when not collecting). Reads only: generation's inputs and RNG are untouched."""
        ids = batch["ids"]
        if not self._collecting():
            return [None] * len(ids)
        variant, labels = self.hparams.passage_scores, batch.get("labels")
        if variant in TEACHER_FORCED and labels is None:
            raise LaMPError(f"--model.passage_scores {variant} needs the gold outputs (teacher forcing); this "
                            "split has none: use --model.passage_scores fid")
        if self.passage_items is None:
            raise LaMPError("--model.passage_scores needs each passage's profile item id: use the "
                            "LaMPDataModule (or set FiDModule.passage_items)")
        items = items_of_batch(self.passage_items, ids)
        n_passages = batch["input_ids"].shape[1]
        context = None
        if variant == "pdist":  # passages without an item (the separate layout's input) are read with each
            context = torch.tensor([[j < len(row) and row[j] is None for j in range(n_passages)] for row in items],
                                   dtype=torch.bool, device=mask.device)
        scores = reader_passage_scores(self.model, encoded, mask, n_passages, variant, labels, context)
        # one example at a time: an evaluation batch may repeat an example (a padded shard)
        return [scores_by_item([qid], [row_items], scores[b:b + 1])[qid]
                for b, (qid, row_items) in enumerate(zip(ids, items))]

    def gather_item_scores(self, order: list[str] | None = None) -> Scores | None:
        """predict: this epoch's scores from every rank (collective: call on all ranks), each question
        once, in ``order`` (the predictions' order) when given; also kept as ``item_scores``."""
        if not self._collecting():
            return None
        self.item_scores = merge_rank_outputs(gather_objects(self._score_rows), order=order)
        self._score_rows = []
        return self.item_scores

    # --- optimization -------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        """Trainable parameters split into a weight-decay group and a no-decay group (biases, norms):
        the LM's, then PPlug's (``self.user``) in the PPlug modes; a frozen LM contributes none."""
        decay, no_decay = [], []
        norm_params = {id(p) for m in self.modules() if isinstance(m, nn.LayerNorm)
                       for p in m.parameters()}
        named = list(self.model.named_parameters())
        if self.user is not None:
            named += [(f"user.{name}", p) for name, p in self.user.named_parameters()]
        for name, p in named:
            if p.requires_grad:
                (no_decay if id(p) in norm_params or _NO_DECAY.search(name) else decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self):
        # lazy: transformers.optimization registers its own optimizers, which `--help` would then list
        from transformers.optimization import get_linear_schedule_with_warmup

        optimizer = self.optimizer(self.parameter_groups())
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise LaMPError("the linear schedule needs a finite run: "
                            "set --trainer.max_steps or --trainer.max_epochs")
        total = int(total)
        warmup = math.ceil(self.hparams.warmup_ratio * total)  # HF Trainer's rounding of warmup_ratio
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
