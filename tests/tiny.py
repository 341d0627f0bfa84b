"""Tiny offline T5s for tests: the demo's builders (:mod:`lamp_fid.data.demo`) with the tests' defaults;
batches of the real PassageCollator.

The tokenizer is trained here (BPE subwords, so any text encodes) and the random T5 is saved with
``save_pretrained``. Everything loads back through ``from_pretrained(path)``, the same path real
checkpoints take, so tests exercise the real loading code without a model hub. Reusable by any test::

    from tiny import build_tiny_t5  # tests/ is on sys.path under pytest
    path = build_tiny_t5(tmp_path / "t5")
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from torch.utils.data import DataLoader

from lamp_fid.data import demo
from lamp_fid.data.module import PassageCollator
from lamp_fid.tasks import TASKS

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
    """The demo's T5-like fast tokenizer with BPE subwords (pad=0, eos=1, unk=2, ``</s>`` appended)."""
    return demo.build_tokenizer(list(texts if texts is not None else corpus()), vocab_size=vocab_size)


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
    return demo.build_tiny_t5(build_tokenizer(texts, vocab_size), Path(path), d_model=d_model, d_ff=d_ff,
                              num_layers=num_layers, num_heads=num_heads, dropout_rate=dropout_rate,
                              initializer_factor=initializer_factor, seed=seed)


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


def build_tiny_bert(path: str | Path, words: Iterable[str], *, hidden: int = 32, intermediate: int = 64,
                    max_length: int = 32, max_positions: int | None = None, dropout: float = 0.0,
                    seed: int = 0, split_punctuation: bool = True) -> Path:
    """A random 2-layer BERT (2 heads) and a WordLevel tokenizer over ``words`` (``[CLS] ... [SEP]``,
    ``[PAD]``/``[UNK]``; ``split_punctuation``: Whitespace, else WhitespaceSplit pre-tokenization), saved
    with ``save_pretrained`` in ``path``: the tests' dense retriever, history and query encoder.
    Initialised from ``seed``; the caller's torch RNG state is left as it was."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    path = Path(path)
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace() if split_punctuation else pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator([" ".join(words)],
                            trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(s, tok.token_to_id(s)) for s in ("[CLS]", "[SEP]")])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]", model_max_length=max_length).save_pretrained(path)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=intermediate,
                        max_position_embeddings=max_positions or max_length,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(path)
    return path


def write_lamp3_splits(data_dir: Path, profile_size: tuple[int, int] = (1, 5)) -> Path:
    """Fake LaMP_3 train/dev/test files (12/6/5 questions, 5-12 words, seed 1) under ``data_dir``, the
    small data set the CLI and PPlug fit tests train on; returns ``data_dir``."""
    from lamp_fid.data.fake import write_fake_split

    for split, n in (("train", 12), ("dev", 6), ("test", 5)):
        write_fake_split(data_dir, "LaMP_3", split, n, profile_size=profile_size, words=(5, 12), seed=1)
    return data_dir
