"""Train-loader throughput: today's on-the-fly path vs the tokenized passage cache (lamp_fid.data.tokens).

Generates a LaMP_4-like fake train split (--questions questions, profiles of 100-300 items of
news-length text), ranks it once with bm25 (cached, not timed), then, for FiD k=8 and IPA k=8 at
max_length 512 with the Flan-T5 tokenizer, batch 16, one process (``num_workers=0``, one tokenizer
thread: ``TOKENIZERS_PARALLELISM=false``), on the same data:

  today   one epoch of DataLoader(PassageDataset, shuffle=True, collate_fn=PassageCollator): every
          example read from the store, its φp passages built (each item tokenized for the budget) and
          tokenized again in the collator
  build   open_tokens on an empty cache: the same passages built and tokenized once, written to disk
  cached  --cached-epochs epochs of DataLoader(TokenDataset, shuffle=True, collate_fn=PadCollator)
  reopen  open_tokens again (key + size + digest check of every file, digests memoized by stat)

and checks that the first batches of both paths (file order) are identical. Then the padding fraction
of the ``[B, n, L]`` input batches: random batches (a shuffled epoch), length-grouped training batches
(LengthGroupedBatchSampler over a shuffled index sampler, groups of 50 batches each sorted by length)
and evaluation batches (all examples sorted by length); the floor is one example per batch (FiD pads
the passages of one example to their longest too).

Rates are given per wall second and per CPU second of this process (the fairer clock on a shared
machine); the load average is printed.

    python benchmarks/bench_loader.py                         # the numbers in RESULTS.md
    python benchmarks/bench_loader.py --questions 64          # a quick check
    python benchmarks/bench_loader.py --words 10 60           # short LaMP_4-like texts (more padding)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one tokenizer thread: one process's work

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler  # noqa: E402

T5_DIR = Path(__file__).resolve().parents[2] / "shared/assets/flan-t5-small"


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(t0: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clock()
    return wall - t0[0], cpu - t0[1]


def epoch(loader) -> int:
    return sum(len(batch["ids"]) for batch in loader)


def same_batches(a: dict, b: dict) -> bool:
    def equal(x, y) -> bool:
        return torch.equal(x, y) and x.dtype == y.dtype if torch.is_tensor(x) else x == y

    return list(a) == list(b) and all(equal(a[k], b[k]) for k in a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=800)
    ap.add_argument("--profile", type=int, nargs=2, default=(100, 300), help="profile size range")
    ap.add_argument("--words", type=int, nargs=2, default=(100, 250), help="words per text (input and items)")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--cached-epochs", type=int, default=5)
    ap.add_argument("--build-workers", type=int, default=0, help="worker processes of the cache build")
    ap.add_argument("--compare-workers", type=int, default=0,
                    help="also build each cache again in a fresh folder with this many worker processes")
    ap.add_argument("--modes", nargs="+", default=["fid", "ipa"])
    ap.add_argument("--tokenizer", default=str(T5_DIR), help="tokenizer folder (default: the Flan-T5 assets)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from transformers import AutoTokenizer

    from lamp_fid.data.fake import write_fake_split
    from lamp_fid.data.module import PassageCollator, PassageDataset
    from lamp_fid.data.store import LaMPStore
    from lamp_fid.data.tokens import LengthGroupedBatchSampler, PadCollator, open_tokens, padding_fraction
    from lamp_fid.prompts import PromptBuilder
    from lamp_fid.retrieval.rank import get_rankings

    load0 = os.getloadavg()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_loader_"))
    cache = work / "cache"
    try:
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        t0 = clock()
        q, o = write_fake_split(work / "data", "LaMP_4", "train", args.questions,
                                profile_size=tuple(args.profile), words=tuple(args.words))
        store = LaMPStore.open("LaMP_4", q, o, cache_dir=cache, progress=False)
        rankings = get_rankings(store, "bm25", cache_dir=cache, progress=False)
        items = int(store.profile_sizes.sum())
        print(f"data: {len(store)} questions, {items} items ({items / len(store):.0f}/question), words "
              f"{args.words[0]}-{args.words[1]}, {q.stat().st_size / 2**20:.0f} MiB of JSON; written, stored "
              f"and ranked in {since(t0)[0]:.0f} s")
        print(f"setting: k={args.k}, max_length={args.max_length}, batch {args.batch}, tokenizer "
              f"{Path(args.tokenizer).name}, num_workers 0, torch threads 1, TOKENIZERS_PARALLELISM="
              f"{os.environ['TOKENIZERS_PARALLELISM']}")
        rows = []
        for mode in args.modes:
            builder = PromptBuilder(store.task, tok, args.max_length, mode=mode)
            today = PassageDataset(store, rankings, builder, args.k, mode)
            collate = PassageCollator(tok, args.max_length, 128)
            torch.manual_seed(0)
            t0 = clock()
            n = epoch(DataLoader(today, batch_size=args.batch, shuffle=True, collate_fn=collate))
            t_today = since(t0)

            t0 = clock()
            dataset = open_tokens(store, rankings, tok, k=args.k, mode=mode, max_length=args.max_length,
                                  cache_dir=cache, workers=args.build_workers, progress=False)
            t_build = since(t0)
            assert dataset.built
            t0 = clock()
            again = open_tokens(store, rankings, tok, k=args.k, mode=mode, max_length=args.max_length,
                                cache_dir=cache, progress=False)
            t_reopen = since(t0)
            assert not again.built
            pad = PadCollator.for_tokenizer(tok)
            loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, collate_fn=pad)
            t0 = clock()
            m = sum(epoch(loader) for _ in range(args.cached_epochs))
            t_cached = since(t0)

            check = min(3, -(-len(store) // args.batch))
            ok = all(same_batches(collate([today[i] for i in range(s, min(s + args.batch, len(store)))]),
                                  pad([dataset[i] for i in range(s, min(s + args.batch, len(store)))]))
                     for s in range(0, check * args.batch, args.batch))
            size = sum(f.stat().st_size for f in dataset.directory.iterdir()) / 2**20

            rng = np.random.default_rng(0)
            perm = rng.permutation(len(dataset))
            random_batches = [perm[s:s + args.batch].tolist() for s in range(0, len(perm), args.batch)]
            longest = dataset.longest()
            base = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
            grouped = list(LengthGroupedBatchSampler(base, args.batch, lengths=longest, group_batches=50))
            in_order = SequentialSampler(dataset)
            sorted_eval = list(LengthGroupedBatchSampler(in_order, args.batch, lengths=longest))
            alone = [[i] for i in range(len(dataset))]  # the floor: each example its own batch
            fractions = [padding_fraction(dataset, b) for b in (random_batches, grouped, sorted_eval, alone)]
            passages = dataset.passage_counts()
            tokens = np.diff(dataset.passage_offsets)
            rows.append((mode, n, t_today, t_build, t_reopen, m, t_cached, ok, size, fractions))
            print(f"\n{mode} k={args.k}: {len(tokens)} passages ({passages.mean():.2f}/example), "
                  f"{tokens.mean():.0f} tokens/passage (min {tokens.min()}, max {tokens.max()}); cache "
                  f"{size:.1f} MiB; budget retries {dataset.retries}, fallbacks {dataset.fallbacks}")
            print(f"  today : {n} examples in {t_today[0]:.2f} s wall / {t_today[1]:.2f} s CPU = "
                  f"{n / t_today[0]:.0f} ex/s wall, {n / t_today[1]:.0f} ex/s CPU")
            print(f"  build : {t_build[0]:.2f} s wall / {t_build[1]:.2f} s CPU = "
                  f"{t_build[0] / t_today[0]:.2f}x one epoch of today's (wall), "
                  f"{t_build[1] / t_today[1]:.2f}x (CPU); workers {args.build_workers}")
            print(f"  reopen: {t_reopen[0] * 1e3:.0f} ms wall")
            if args.compare_workers:
                t0 = clock()
                other = open_tokens(store, rankings, tok, k=args.k, mode=mode, max_length=args.max_length,
                                    cache_dir=work / f"cache-{mode}-w{args.compare_workers}",
                                    workers=args.compare_workers, progress=False)
                t_other = since(t0)
                print(f"  build with {args.compare_workers} workers: {t_other[0]:.2f} s wall "
                      f"({t_build[0] / t_other[0]:.2f}x faster than with {args.build_workers}); identical "
                      f"files: {other.meta['files'] == dataset.meta['files']}")
            print(f"  cached: {m} examples in {t_cached[0]:.3f} s wall / {t_cached[1]:.3f} s CPU = "
                  f"{m / t_cached[0]:.0f} ex/s wall, {m / t_cached[1]:.0f} ex/s CPU; "
                  f"{(m / t_cached[0]) / (n / t_today[0]):.0f}x today's (wall), "
                  f"{(m / t_cached[1]) / (n / t_today[1]):.0f}x (CPU)")
            print(f"  first {check} batches identical to today's: {ok}")
            print(f"  padding fraction of the input batches: random {fractions[0]:.3f}, length-grouped "
                  f"training {fractions[1]:.3f}, sorted evaluation {fractions[2]:.3f} (floor, one example "
                  f"per batch: {fractions[3]:.3f})")
        load1 = os.getloadavg()
        print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
              f"{platform.python_version()}, torch {torch.__version__}; load average {load0[0]:.1f} at the "
              f"start, {load1[0]:.1f} at the end")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
