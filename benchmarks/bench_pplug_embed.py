"""PPlug's frozen history embeddings: build throughput (items/s), a second open, and cross-file reuse.

Writes a fake time-split LaMP_3 train file (--questions questions, --questions-per-user consecutive
questions per user whose profiles share most items, as in LaMP) and a dev file made of the last
--shared-users users of train (same items) plus as many new users, opens both as LaMPStores, then
times :func:`lamp_fid.data.history.open_history`:

  build     train, cold cache: read every profile, embed each distinct item text once, write the cache
  reopen    train again: verify the cache (size + digest of every file), embed nothing
  dev       dev, cold for its own key: rows already in train's cache are copied, the rest embedded

items/s = distinct texts embedded / build wall time (reading, embedding and writing included). The
encoder is the tiny random BERT of bench_retrieval.py (hidden 64, 2 layers; --encoder tiny, default)
or any local HF encoder folder (e.g. all-MiniLM-L6-v2 with --pooling mean). One torch thread unless
--threads. The data and cache go to a temp folder that is deleted afterwards.

    python benchmarks/bench_pplug_embed.py
    python benchmarks/bench_pplug_embed.py --encoder /path/to/all-MiniLM-L6-v2 --pooling mean --questions 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import torch  # noqa: E402

from bench_retrieval import tiny_encoder  # noqa: E402  (benchmarks/ is the script's folder)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn):
    wall, c = time.perf_counter(), cpu()
    out = fn()
    return out, time.perf_counter() - wall, cpu() - c


def dev_file(train_q: Path, train_o: Path, path: Path, shared_users: int, new_q: Path, new_o: Path):
    """Dev questions: train's last ``shared_users`` users (same items, as in the time split) + new users."""
    questions, golds = json.loads(train_q.read_text()), json.loads(train_o.read_text())
    users = list(dict.fromkeys(q["user_id"] for q in questions))[-shared_users:]
    keep = [i for i, q in enumerate(questions) if q["user_id"] in users]
    extra_q, extra_o = json.loads(new_q.read_text()), json.loads(new_o.read_text())
    qs = [questions[i] for i in keep] + extra_q
    os_ = [golds["golds"][i] for i in keep] + extra_o["golds"]
    for n, q in enumerate(qs):  # unique ids in the new file
        q["id"] = os_[n]["id"] = f"dev{n}"
    path.mkdir(parents=True, exist_ok=True)
    (path / "dev_questions.json").write_text(json.dumps(qs))
    (path / "dev_outputs.json").write_text(json.dumps({"task": "LaMP_3", "golds": os_}))
    return path / "dev_questions.json", path / "dev_outputs.json"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=600)
    ap.add_argument("--questions-per-user", type=int, default=5)
    ap.add_argument("--profile", type=int, nargs=2, default=(100, 160), help="profile size range")
    ap.add_argument("--words", type=int, nargs=2, default=(30, 120), help="review length range (words)")
    ap.add_argument("--shared-users", type=int, default=40, help="train users that dev also has")
    ap.add_argument("--encoder", default="tiny")
    ap.add_argument("--pooling", default="cls", choices=("cls", "mean"))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lamp_fid.data.fake import write_fake_split
    from lamp_fid.data.history import open_history
    from lamp_fid.data.store import LaMPStore

    tmp = Path(tempfile.mkdtemp(prefix="bench-pplug-"))
    try:
        opts = dict(profile_size=tuple(args.profile), words=tuple(args.words),
                    questions_per_user=args.questions_per_user)
        tq, to = write_fake_split(tmp / "data", "LaMP_3", "train", args.questions, time_split=True, **opts)
        nq, no = write_fake_split(tmp / "new", "LaMP_3", "dev", args.shared_users * args.questions_per_user,
                                  time_split=True, seed=1, **opts)
        dq, do = dev_file(tq, to, tmp / "dev", args.shared_users, nq, no)
        cache = tmp / "cache"
        train = LaMPStore.open("LaMP_3", tq, to, cache_dir=cache, progress=False)
        dev = LaMPStore.open("LaMP_3", dq, do, cache_dir=cache, progress=False)
        if args.encoder == "tiny":
            encoder = tiny_encoder(tmp / "encoder", [ex.input for ex in train][:500])
        else:
            encoder = args.encoder
        items = sum(len(ex.profile) for ex in train)
        kw = dict(pooling=args.pooling, batch_size=args.batch_size, cache_dir=cache, progress=False)

        built, wall, c = timed(lambda: open_history(train, encoder, **kw))
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"torch {torch.__version__}, {args.threads} thread(s), load {os.getloadavg()[0]:.1f}")
        print(f"encoder: {args.encoder} ({args.pooling}), dim {built.dim}, float16 cache")
        print(f"train: {len(train)} questions, {items} profile items, {built.meta['n_texts']} distinct "
              f"texts ({items / max(built.meta['n_texts'], 1):.1f} items per text)")
        print(f"build:  {wall:.2f} s wall, {c:.2f} s CPU; embedded {built.embedded}: "
              f"{built.embedded / wall:.0f} items/s wall, {built.embedded / c:.0f} items/s CPU")
        again, wall2, c2 = timed(lambda: open_history(train, encoder, **kw))
        size = sum(p.stat().st_size for p in again.directory.iterdir())
        print(f"reopen: {wall2:.3f} s wall, {c2:.3f} s CPU; embedded {again.embedded} "
              f"(cache folder {size / 2**20:.1f} MiB)")
        d, wall3, c3 = timed(lambda: open_history(dev, encoder, **kw))
        print(f"dev:    {len(dev)} questions, {d.meta['n_texts']} distinct texts: reused {d.reused} from "
              f"train's cache, embedded {d.embedded}; {wall3:.2f} s wall, {c3:.2f} s CPU")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
