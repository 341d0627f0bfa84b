"""Ranking time of lamp-fid's bm25 and dense retrievers against the official per-question procedure.

Generates a fake LaMP_4 dev split at the real scale (1,500 questions x ~290 news-length items; users
ask --questions-per-user consecutive questions whose profiles share most items, as in LaMP), opens it
as a LaMPStore, loads the examples into memory, and times, side by side in one process (one torch
thread, the models loaded before any timing):

  bm25      lamp-fid: BM25Retriever.rank_all over all questions (vectorised, exact)
            official: per question BM25Okapi([t.split() for t in corpus]) + get_top_n(n=len(profile))
  dense     lamp-fid: DenseRetriever.rank_all (each distinct item text embedded once, length-sorted
            batches of 64, then matmul + topk per question)
            official: per question the query alone, then the profile in batches of 16 (padding=True,
            truncation=True), dot products, torch.topk over all items (under no_grad; the official
            script also keeps autograd on and reloads the model per question: not imitated)

Both sides return full rankings; the script checks that they are identical (all of bm25; dense: the
full ranking and the top 1/5/10 of every question both ranked). The dense encoder is a tiny BERT
(random weights, hidden 64, 2 layers, WordLevel tokenizer trained on the fake text), the same on both
sides. Dense is slow on a 2-core CPU, so it runs on the start of the file: lamp-fid on the first
--dense-questions questions (whole users, so its de-duplication sees what it would see in the full
file), the official procedure on the first --dense-baseline-questions; speed-up = ratio of the times
per question. Also times get_rankings end to end (store read + rank + cache write) and a second call
(cache hit).

    python benchmarks/bench_retrieval.py                       # the full run (a few minutes)
    python benchmarks/bench_retrieval.py --questions 100 --dense-baseline-questions 20   # quick check
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread everywhere: CPU time = work done
import torch  # noqa: E402


def tiny_encoder(path: Path, texts: list[str]) -> str:
    """A 2-layer BERT with random weights and a WordLevel tokenizer trained on ``texts``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=8000, special_tokens=[
        "[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]", model_max_length=512).save_pretrained(path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=256,
                         max_position_embeddings=512)).save_pretrained(path)
    return str(path)


def official_bm25(task, examples) -> list[np.ndarray]:
    from rank_bm25 import BM25Okapi

    out = []
    for ex in examples:
        corpus = [task.item_text(p) for p in ex.profile]
        if not corpus:
            out.append(np.empty(0, dtype=np.int64))
            continue
        bm25 = BM25Okapi([t.split() for t in corpus])
        out.append(np.asarray(bm25.get_top_n(task.query_of(ex.input).split(), list(range(len(corpus))),
                                             n=len(corpus))))
    return out


def official_dense(task, examples, encoder: str, batch_size: int = 16) -> tuple[list, tuple[float, float]]:
    from transformers import AutoModel, AutoTokenizer

    from lamp_fid.retrieval.dense import mean_pool

    tok, model = AutoTokenizer.from_pretrained(encoder), AutoModel.from_pretrained(encoder).eval()

    def embed(texts):
        t = tok(texts, padding=True, truncation=True, return_tensors="pt")
        return mean_pool(model(**t).last_hidden_state, t["attention_mask"])

    out = []
    with torch.no_grad():
        embed(["warm up"])
        t0 = clock()
        for ex in examples:
            corpus = [task.item_text(p) for p in ex.profile]
            q = embed([task.query_of(ex.input)])
            scores = []
            for s in range(0, len(corpus), batch_size):
                scores.extend((q.squeeze() @ embed(corpus[s:s + batch_size]).T).tolist())
            out.append(torch.topk(torch.tensor(scores), len(scores)).indices.numpy())
    return out, since(t0)


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(t0: tuple[float, float]) -> tuple[float, float]:
    """(wall, CPU) seconds since ``t0``: CPU time of this process is what the shared box's other load
    disturbs least (one torch thread, so it is the work done)."""
    wall, cpu = clock()
    return wall - t0[0], cpu - t0[1]


def same(a: list[np.ndarray], b: list[np.ndarray], k: int | None = None) -> int:
    return sum(x[:k].tolist() == y[:k].tolist() for x, y in zip(a, b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=1500)
    ap.add_argument("--profile", type=int, nargs=2, default=(250, 330), help="profile size range")
    ap.add_argument("--words", type=int, nargs=2, default=(100, 250), help="words per item text")
    ap.add_argument("--questions-per-user", type=int, default=5)
    ap.add_argument("--dense-questions", type=int, default=150,
                    help="questions (whole users, from the start of the file) lamp-fid's dense ranks")
    ap.add_argument("--dense-baseline-questions", type=int, default=15,
                    help="questions (from the start of the file) the official dense procedure is timed on")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from lamp_fid.data.fake import write_fake_split
    from lamp_fid.data.store import LaMPStore
    from lamp_fid.retrieval.bm25 import BM25Retriever
    from lamp_fid.retrieval.rank import get_rankings
    from lamp_fid.retrieval.dense import DenseRetriever

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_retrieval_"))
    try:
        t0 = clock()
        q, o = write_fake_split(work / "data", "LaMP_4", "dev", args.questions, profile_size=tuple(args.profile),
                                words=tuple(args.words), questions_per_user=args.questions_per_user)
        store = LaMPStore.open("LaMP_4", q, o, cache_dir=work / "cache", progress=False)
        examples = list(store)
        task = store.task
        n_items = sum(len(ex.profile) for ex in examples)
        distinct = len({task.item_text(p) for ex in examples for p in ex.profile})
        print(f"data: {len(examples)} questions, {n_items} items ({n_items / len(examples):.0f}/question, "
              f"{distinct} distinct texts), {q.stat().st_size / 2**20:.0f} MiB of JSON, "
              f"{args.questions_per_user} questions per user; built in {since(t0)[0]:.0f} s")

        # --- bm25 ---
        t0 = clock()
        ours = [r for _, r in BM25Retriever(task).rank_all(examples, progress=False)]
        t_ours = since(t0)
        t0 = clock()
        ref = official_bm25(task, examples)
        t_ref = since(t0)
        n = len(examples)
        print(f"bm25 on {n} questions: lamp-fid {t_ours[0]:.1f} s wall / {t_ours[1]:.1f} s CPU "
              f"({t_ours[1] / n * 1e3:.2f} ms CPU/question); official {t_ref[0]:.1f} s wall / {t_ref[1]:.1f} s CPU "
              f"({t_ref[1] / n * 1e3:.2f} ms CPU/question); speed-up {t_ref[0] / t_ours[0]:.1f}x wall, "
              f"{t_ref[1] / t_ours[1]:.1f}x CPU; identical full rankings: {same(ours, ref)}/{n}")

        t0 = clock()
        get_rankings(store, "bm25", cache_dir=work / "cache", progress=False)
        t_cold = since(t0)
        t0 = clock()
        get_rankings(store, "bm25", cache_dir=work / "cache", progress=False)
        print(f"get_rankings bm25: first call (read store, rank, write cache) {t_cold[0]:.1f} s wall, "
              f"second call (cache hit) {since(t0)[0]:.3f} s wall")

        # --- dense ---
        sample = [p["text"] for ex in examples[:200] for p in ex.profile[:20]]
        encoder = tiny_encoder(work / "tiny-bert", sample)
        dense = DenseRetriever(task, encoder=encoder, batch_size=64, progress=False)
        dense._load()
        mine = examples[:args.dense_questions]
        t0 = clock()
        ours = [r for _, r in dense.rank_all(mine, progress=False)]
        t_ours = since(t0)
        n_mine = sum(len(ex.profile) for ex in mine)
        d_mine = len({task.item_text(p) for ex in mine for p in ex.profile})
        sub = examples[:args.dense_baseline_questions]
        ref, t_ref = official_dense(task, sub, encoder)
        per_ours = [t / len(mine) for t in t_ours]
        per_ref = [t / len(sub) for t in t_ref]
        print(f"dense: lamp-fid on {len(mine)} questions ({n_mine} items, {d_mine} distinct texts embedded once): "
              f"{t_ours[0]:.1f} s wall / {t_ours[1]:.1f} s CPU = {per_ours[1] * 1e3:.0f} ms CPU/question; "
              f"official on {len(sub)} questions: {t_ref[0]:.1f} s wall / {t_ref[1]:.1f} s CPU = "
              f"{per_ref[1] * 1e3:.0f} ms CPU/question; speed-up per question {per_ref[0] / per_ours[0]:.1f}x wall, "
              f"{per_ref[1] / per_ours[1]:.1f}x CPU (whole file, CPU: lamp-fid ~{per_ours[1] * n:.0f} s, "
              f"official ~{per_ref[1] * n:.0f} s)")
        print("dense identical rankings on the questions both ranked: "
              + ", ".join(f"top-{k}: {same(ours, ref, k)}/{len(sub)}" for k in (1, 5, 10))
              + f", full: {same(ours, ref)}/{len(sub)}")
        print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"threads {torch.get_num_threads()}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
