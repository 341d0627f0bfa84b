"""Tiny offline T5s for tests: a tokenizer trained here and a random T5 saved with ``save_pretrained``;
batches of the real PassageCollator.

Everything loads back through ``from_pretrained(path)``, the same path real checkpoints take, so tests
exercise the real loading code without a model hub. Reusable by any test::

    from tiny import build_tiny_t5  # tests/ is on sys.path under pytest
    path = build_tiny_t5(tmp_path / "t5")
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from torch.utils.data import DataLoader

from lamp_fid.data.module import PassageCollator
from lamp_fid.tasks import TASKS

SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2: T5's pad and eos ids

SENTENCES = (
    "Which tag does this movie relate to among the following tags? Just answer with the tag name "
    "without further explanation.",
    'the tag for the movie: "a man travels through time to save his family" is "sci-fi"',
    "What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, 3, 4, "
    "or 5 without further explanation. review: great product, works as described",
    'For an author who has written the paper with the title "deep nets", which reference is related? '
    'Just answer with [1] or [2] without explanation. [1]: "graph search" [2]: "neural networks"',
    "Generate a headline for the following article: the city council approved the new park today",
    "Generate a title for the following abstract of a paper: we study retrieval for personalization",
    "Paraphrase the following tweet without any explanation before or after it: what a lovely day",
    "Following the given patterns are written by a person.",
)


def corpus(extra: Iterable[str] = ()) -> list[str]:
    """Default training text: prompt-like sentences plus every label of every LaMP task."""
    labels = [label for task in TASKS.values() for label in task.labels]
    return [*SENTENCES, *labels, *extra]


def build_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 400):
    """A T5-like fast tokenizer (BPE over ▁-prefixed words, pad=0, eos=1, unk=2, ``</s>`` appended)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False)
    tok.train_from_iterator(list(texts if texts is not None else corpus()), trainer=trainer)
    assert [tok.token_to_id(s) for s in SPECIALS] == [0, 1, 2]
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def build_tiny_t5(
    path: str | Path,
    texts: Iterable[str] | None = None,
    d_model: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    d_ff: int = 64,
    vocab_size: int = 400,
    dropout_rate: float = 0.0,
    initializer_factor: float = 3.0,
    seed: int = 0,
) -> Path:
    """Save a random T5 of the given size and its tokenizer to ``path``; return ``path``.

    ``initializer_factor`` 3 (T5's default is 1) makes a random model's generations depend on its
    input; with 1 a tiny random T5 emits only padding, which would make generation tests vacuous.
    """
    from transformers import T5Config, T5ForConditionalGeneration

    path = Path(path)
    tokenizer = build_tokenizer(texts, vocab_size)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // num_heads, d_ff=d_ff,
        num_layers=num_layers, num_decoder_layers=num_layers, num_heads=num_heads,
        dropout_rate=dropout_rate, initializer_factor=initializer_factor,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def passage_batch(tokenizer, passages: list[list[str]], targets: list[str] | None = None,
                  ids: list[str] | None = None) -> dict:
    """A batch of the real :class:`PassageCollator` from passage texts (one list per example)."""
    ids = list(ids) if ids is not None else [str(i) for i in range(len(passages))]
    targets = list(targets) if targets is not None else [None] * len(passages)
    rows = [{"id": i, "passages": ps, "target": t} for i, ps, t in zip(ids, passages, targets)]
    return PassageCollator(tokenizer, max_length=512, max_target_length=128)(rows)


def passage_loader(tokenizer, examples: list[dict], batch_size: int = 2) -> DataLoader:
    """A DataLoader of real :class:`PassageCollator` batches over ``[{"id", "passages", "target"}]``
    (what :class:`PassageDataset` yields), in order."""
    collate = PassageCollator(tokenizer, max_length=512, max_target_length=128)
    return DataLoader(examples, batch_size=batch_size, shuffle=False, collate_fn=collate)
