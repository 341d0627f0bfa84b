"""GPU checks (issue 11): training, generation, loader and dense-ranking throughput on one CUDA device.

On a CUDA machine, with a random-init model of the real flan-t5-base shape (the T5Config values are
written below: d_model 768, d_ff 2048, 12+12 layers, 12 heads, d_kv 64, vocabulary 32,128,
gated-gelu) and the Flan-T5 tokenizer from --tokenizer, it measures (transformers 5 ties the LM head
to the embedding of a T5 built from a config, so the model has 222.9 M parameters where the checkpoint
has 247.6 M; the computation is the same: the LM head matmul runs either way, and
``tie_word_embeddings=False`` keeps Flan-T5's unscaled decoder output; optimizer memory is ~0.4 GB
lower):

  train     bf16-mixed training examples/s of FiD (k=8 passages of L=512 tokens) and IPA (1 passage
            of 512 tokens), batch 16, targets of T=32 tokens: FiDModule.forward + backward + the
            project's AdamW step under ``torch.autocast(bfloat16)`` with float32 weights (what
            Lightning's ``bf16-mixed`` does); model FLOPs utilization and peak memory. A batch that
            does not fit is halved until it does (the batch used is reported).
  loader    examples/s of the train loader on LaMP_4-like fake data (news-length items), one process:
            today's path (PassageDataset + PassageCollator) and the tokenized cache (TokenDataset +
            PadCollator), beside the training rate it has to feed
  generate  examples/s of beam search (4 beams, exactly --new-tokens new tokens: min = max, so a
            random model's early end-of-sequence cannot flatter the number), FiD k=8 L=512
  dense     items/s of DenseRetriever.embed on CUDA (a random BERT-base-shaped encoder, fp32, as
            the retriever runs), on distinct fake LaMP_4 item texts
  fsdp_fit  a 1-GPU FSDP smoke: ``lamp_fid.cli.main(["fit", ...])`` with --trainer.strategy fsdp and
            bf16-mixed on fake LaMP_3 data and a tiny T5 (a few steps, one validation)

and prints one JSON summary (also written to --output). Without CUDA it prints a message and exits 0;
``--dry-run`` runs every part on the CPU with a tiny config (numbers meaningless; FSDP is replaced by
the default strategy) to check the script itself.

FLOPs (per training example; MFU = FLOPs/s over the device's dense bf16 peak):
  6 x P_enc x (k*L)                          encoder weights (embedding lookups excluded)
  + 6 x (P_dec - P_xkv) x T                  decoder weights, LM head included, on the T target tokens
  + 6 x P_xkv x (k*L)                        the cross-attention K/V projections run on the k*L encoder
                                             states, not on T
  + 12 x inner x [layers_enc x k x L^2 + layers_dec x (T^2 + T x k x L)]
                                             attention scores and weighted sums (QK^T and AV, 2 FLOPs
                                             per multiply-add, x3 for forward + backward; causal
                                             self-attention counted in full)
  with inner = heads x d_kv. Padding is counted as work (the batches here are all real tokens).

    python benchmarks/gpu_check.py --tokenizer ../shared/assets/flan-t5-small --output gpu.json
    python benchmarks/gpu_check.py --dry-run        # on a CPU: exercise the script, tiny config
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

T5_DIR = Path(__file__).resolve().parents[2] / "shared/assets/flan-t5-small"

FLAN_T5_BASE = dict(d_model=768, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12, d_kv=64,
                    vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                    dropout_rate=0.1, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    layer_norm_epsilon=1e-6, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
TINY = {**FLAN_T5_BASE, "d_model": 64, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 2,
        "d_kv": 32}
BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 max_position_embeddings=512)
BERT_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                 max_position_embeddings=512)

#: dense bf16 tensor-core peaks (TFLOP/s, no sparsity), matched in this order against the device name
PEAK_BF16_TFLOPS = (("GH200", 989.4), ("H200", 989.4), ("H100 PCIE", 756.0), ("H100", 989.4),
                    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0), ("A10", 125.0))


# --- counting -------------------------------------------------------------------------------------

def train_flops_per_example(config, k: int, L: int, T: int) -> dict[str, float]:
    """Model FLOPs of one training example (forward + backward) by the formula of the module docstring."""
    d, inner, vocab = config.d_model, config.num_heads * config.d_kv, config.vocab_size
    n_enc, n_dec = config.num_layers, config.num_decoder_layers
    gated = 3 if "gated" in config.feed_forward_proj else 2
    attn = 4 * d * inner  # q, k, v, o
    p_enc = n_enc * (attn + gated * d * config.d_ff + 2 * d) + d  # + layer norms, final norm
    p_xkv = n_dec * 2 * d * inner
    p_dec = n_dec * (2 * attn + gated * d * config.d_ff + 3 * d) + d + d * vocab  # + LM head
    enc_tokens = k * L
    weights = 6 * p_enc * enc_tokens + 6 * (p_dec - p_xkv) * T + 6 * p_xkv * enc_tokens
    attention = 12 * inner * (n_enc * k * L * L + n_dec * (T * T + T * enc_tokens))
    return {"weights": float(weights), "attention": float(attention), "total": float(weights + attention),
            "params_encoder": p_enc, "params_decoder": p_dec, "params_cross_kv": p_xkv}


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    upper = name.upper()
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in upper), None)


# --- pieces ---------------------------------------------------------------------------------------

def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def autocast(device: str):
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


def save_t5(path: Path, config: dict, tokenizer: str) -> Path:
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    T5ForConditionalGeneration(T5Config(**config)).save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(path)
    return path


def batch(B: int, k: int, L: int, T: int, vocab: int, device: str) -> dict[str, torch.Tensor]:
    """All-real tokens: random ids, full masks, targets ending in ``</s>``."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (B, k, L), generator=g)
    ids[..., -1] = 1
    labels = torch.randint(3, vocab, (B, T), generator=g)
    labels[:, -1] = 1
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": labels.to(device)}


def memory(device: str) -> dict:
    if not device.startswith("cuda"):
        return {}
    return {"peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30}


def reset_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def train_steps(module, B: int, k: int, args, device: str) -> tuple[float, float]:
    """Seconds of ``args.steps`` timed training steps (after ``args.warmup``) and the last loss."""
    from lamp_fid.model import PAPER_OPTIMIZER

    module.train()
    optimizer = PAPER_OPTIMIZER(module.parameter_groups())
    data = batch(B, k, args.length, args.target_length, module.model.config.vocab_size, device)
    t0 = time.perf_counter()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync(device)
            t0 = time.perf_counter()
        with autocast(device):
            loss = module(data["input_ids"], data["attention_mask"], data["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t0, loss.detach().item()


def measure_training(module, k: int, args, device: str, peak: float | None) -> dict:
    """bf16-mixed training steps of ``module`` on ``[B, k, L]`` batches; the batch halves on OOM."""
    B, L, T = args.batch, args.length, args.target_length
    while True:
        reset_memory(device)
        try:
            seconds, loss = train_steps(module, B, k, args, device)
            break
        except torch.cuda.OutOfMemoryError:
            module.zero_grad(set_to_none=True)
            if B == 1:
                return {"error": "out of memory at batch 1"}
            B //= 2
    flops = train_flops_per_example(module.model.config, k, L, T)
    rate = B * args.steps / seconds
    out = {"batch": B, "k": k, "L": L, "T": T, "steps": args.steps, "seconds": seconds,
           "examples_per_s": rate, "encoder_tokens_per_s": rate * k * L, "loss": loss,
           "flops_per_example": flops["total"], "attention_flops_share": flops["attention"] / flops["total"],
           "achieved_tflops": rate * flops["total"] / 1e12, **memory(device)}
    out["mfu"] = out["achieved_tflops"] / peak if peak else None
    module.zero_grad(set_to_none=True)
    return out


@torch.inference_mode()
def measure_generation(module, args, device: str) -> dict:
    from transformers.modeling_outputs import BaseModelOutput

    module.eval()
    reset_memory(device)
    B, k, n = args.batch, args.k, args.new_tokens
    data = batch(B, k, args.length, 2, module.model.config.vocab_size, device)
    rounds = []
    for _ in range(args.generate_batches + 1):  # the first is a warm-up
        sync(device)
        t0 = time.perf_counter()
        with autocast(device):
            encoded, mask = module.fuse(data["input_ids"], data["attention_mask"])
            states = BaseModelOutput(last_hidden_state=encoded.last_hidden_state)
            out = module.model.generate(encoder_outputs=states, attention_mask=mask, num_beams=args.beams,
                                        max_new_tokens=n, min_new_tokens=n)
        sync(device)
        rounds.append(time.perf_counter() - t0)
    seconds = sum(rounds[1:])
    return {"batch": B, "k": k, "L": args.length, "beams": args.beams, "new_tokens": n,
            "generated_length": int(out.shape[1]), "examples_per_s": B * args.generate_batches / seconds,
            **memory(device)}


def measure_loader(work: Path, tokenizer, args) -> dict:
    """Train-loader examples/s, one process, on LaMP_4-like data: today's path vs the token cache."""
    from torch.utils.data import DataLoader

    from lamp_fid.data.fake import write_fake_split
    from lamp_fid.data.module import PassageCollator, PassageDataset
    from lamp_fid.data.store import LaMPStore
    from lamp_fid.data.tokens import PadCollator, open_tokens
    from lamp_fid.prompts import PromptBuilder
    from lamp_fid.retrieval.rank import get_rankings

    q, o = write_fake_split(work / "loader-data", "LaMP_4", "train", args.loader_questions,
                            profile_size=(100, 300), words=tuple(args.words))
    cache = work / "loader-cache"
    store = LaMPStore.open("LaMP_4", q, o, cache_dir=cache, progress=False)
    rankings = get_rankings(store, "bm25", cache_dir=cache, progress=False)
    out = {"questions": len(store), "words": list(args.words), "batch": args.batch}
    for mode, k in (("fid", args.k), ("ipa", args.k)):
        builder = PromptBuilder(store.task, tokenizer, args.length, mode=mode)
        today = DataLoader(PassageDataset(store, rankings, builder, k, mode), batch_size=args.batch,
                           shuffle=True, collate_fn=PassageCollator(tokenizer, args.length, 128))
        t0 = time.perf_counter()
        n = sum(len(b["ids"]) for b in today)
        t_today = time.perf_counter() - t0
        t0 = time.perf_counter()
        dataset = open_tokens(store, rankings, tokenizer, k=k, mode=mode, max_length=args.length,
                              cache_dir=cache, progress=False)
        t_build = time.perf_counter() - t0
        cached = DataLoader(dataset, batch_size=args.batch, shuffle=True,
                            collate_fn=PadCollator.for_tokenizer(tokenizer))
        t0 = time.perf_counter()
        m = sum(len(b["ids"]) for _ in range(5) for b in cached)
        t_cached = time.perf_counter() - t0
        out[mode] = {"k": k, "today_examples_per_s": n / t_today, "build_s": t_build,
                     "build_over_one_epoch": t_build / t_today, "cached_examples_per_s": m / t_cached}
    return out


def measure_dense(work: Path, tokenizer: str, args, device: str) -> dict:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from lamp_fid.data.fake import fake_examples
    from lamp_fid.retrieval.dense import DenseRetriever
    from lamp_fid.tasks import get_task

    path = work / "dense-encoder"
    tok = AutoTokenizer.from_pretrained(tokenizer)
    torch.manual_seed(0)
    shape = BERT_TINY if args.dry_run else BERT_BASE
    BertModel(BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **shape)).save_pretrained(path)
    tok.save_pretrained(path)
    task = get_task("LaMP_4")
    texts: list[str] = []
    for question, _ in fake_examples(task, args.dense_items // 100 + 1, profile_size=(100, 100),
                                     words=tuple(args.words)):
        texts.extend(task.item_text(item) for item in question["profile"])
    texts = list(dict.fromkeys(texts))[:args.dense_items]
    retriever = DenseRetriever(task, encoder=str(path), batch_size=args.dense_batch, device=device,
                               progress=False)
    retriever._load()
    retriever.embed(texts[:256], progress=False)  # warm-up
    reset_memory(device)
    sync(device)
    t0 = time.perf_counter()
    emb = retriever.embed(texts, progress=False)
    sync(device)
    seconds = time.perf_counter() - t0
    return {"items": len(texts), "dim": int(emb.shape[1]), "batch": args.dense_batch,
            "items_per_s": len(texts) / seconds, "encoder": "random BERT-base shape, fp32", **memory(device)}


def fsdp_fit(work: Path, tokenizer: str, device: str, dry_run: bool) -> dict:
    """``lamp-fid fit`` through lamp_fid.cli.main on fake data: FSDP on 1 GPU (the default strategy on
    a CPU dry run); returns the run folder's files."""
    from lamp_fid.cli import main
    from lamp_fid.data.fake import write_fake_split

    data = work / "fit-data"
    for split, n in (("train", 32), ("dev", 8)):
        write_fake_split(data, "LaMP_3", split, n, profile_size=(2, 6), words=(10, 30), seed=1)
    model = save_t5(work / "fit-model", TINY, tokenizer)
    cuda = device.startswith("cuda")
    trainer = (["--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.strategy", "fsdp",
                "--trainer.precision", "bf16-mixed"] if cuda else
               ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true"])
    args = ["fit", "--data.task", "LaMP_3", "--data.data_dir", str(data), "--data.cache_dir",
            str(work / "fit-cache"), "--data.download", "false", "--data.batch_size", "4",
            "--data.max_length", "128", "--data.mode", "fid", "--data.k", "2",
            "--model.model_name_or_path", str(model), "--model.num_beams", "1", "--model.max_new_tokens", "4",
            "--runs_dir", str(work / "runs"), "--run_name", "fsdp", "--trainer.max_steps", "6",
            "--trainer.val_check_interval", "6", "--trainer.limit_val_batches", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *trainer]
    t0 = time.perf_counter()
    try:
        main(args)
    except (Exception, SystemExit) as err:  # noqa: BLE001 - a smoke test reports whatever stopped it
        return {"ok": False, "strategy": "fsdp" if cuda else "auto", "error": f"{type(err).__name__}: {err}",
                "trace": traceback.format_exc(limit=8)}
    run = work / "runs" / "fsdp"
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    return {"ok": (run / "last.ckpt").exists(), "strategy": "fsdp" if cuda else "auto",
            "seconds": time.perf_counter() - t0, "files": files[:30]}


def part(summary: dict, name: str, fn, *args) -> None:
    """Run one measurement; a failure is recorded in the summary and the others still run."""
    print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
    try:
        summary[name] = fn(*args)
    except Exception as err:  # noqa: BLE001 - report and go on
        summary[name] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc(limit=8)}
    print(f"gpu_check: {name}: {json.dumps(summary[name], default=str)[:400]}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default=str(T5_DIR), help="Flan-T5 tokenizer folder")
    ap.add_argument("--dry-run", action="store_true", help="run every part on the CPU with a tiny config")
    ap.add_argument("--output", type=Path, default=None, help="also write the JSON summary here")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (MFU)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--target-length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--generate-batches", type=int, default=3)
    ap.add_argument("--loader-questions", type=int, default=256)
    ap.add_argument("--words", type=int, nargs=2, default=(100, 250))
    ap.add_argument("--dense-items", type=int, default=20000)
    ap.add_argument("--dense-batch", type=int, default=256)
    ap.add_argument("--parts", nargs="+", default=["train", "loader", "generate", "dense", "fsdp_fit"])
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("gpu_check: no CUDA device here: skipped (nothing measured). Run it on a GPU machine, or "
              "pass --dry-run to exercise the script on this CPU with a tiny config.")
        return 0
    if not Path(args.tokenizer).is_dir():
        print(f"gpu_check: error: {args.tokenizer}: no tokenizer folder (pass --tokenizer)", file=sys.stderr)
        return 2
    if args.dry_run:  # every part, tiny and short
        args.batch, args.k, args.length, args.target_length = 2, 2, 64, 8
        args.steps, args.warmup, args.new_tokens, args.generate_batches = 1, 1, 4, 1
        args.loader_questions, args.words, args.dense_items, args.dense_batch = 16, (10, 40), 300, 64
        torch.set_num_threads(1)
    device = "cuda" if cuda and not args.dry_run else "cpu"
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine()
    peak = peak_tflops(name, args.peak_tflops) if device == "cuda" else None
    import transformers

    summary: dict = {"device": name, "dry_run": args.dry_run, "torch": torch.__version__,
                     "transformers": transformers.__version__, "peak_bf16_tflops": peak,
                     "model": "random flan-t5-base shape" if not args.dry_run else "random tiny T5",
                     "flops": "6 x params x tokens for encoder tokens (k*L) and decoder tokens (T) "
                              "separately (cross-attention K/V on encoder tokens), plus 12 x inner x "
                              "query x key positions per attention layer; embeddings excluded"}
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        from transformers import AutoTokenizer

        from lamp_fid.model import FiDModule

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        module = None
        if {"train", "generate"} & set(args.parts):
            path = save_t5(work / "model", TINY if args.dry_run else FLAN_T5_BASE, args.tokenizer)
            module = FiDModule(task="LaMP_4", model_name_or_path=str(path)).to(device)
            summary["params"] = sum(p.numel() for p in module.model.parameters())
        if "train" in args.parts:
            part(summary, "train_fid", measure_training, module, args.k, args, device, peak)
            part(summary, "train_ipa", measure_training, module, 1, args, device, peak)
        if "loader" in args.parts:
            part(summary, "loader", measure_loader, work, tokenizer, args)
            for mode, key in (("fid", "train_fid"), ("ipa", "train_ipa")):
                rate = summary.get(key, {}).get("examples_per_s")
                loader = summary["loader"].get(mode, {}) if isinstance(summary["loader"], dict) else {}
                if rate and loader:
                    loader["today_over_train"] = loader["today_examples_per_s"] / rate
                    loader["cached_over_train"] = loader["cached_examples_per_s"] / rate
        if "generate" in args.parts:
            part(summary, "generate", measure_generation, module, args, device)
        del module
        reset_memory(device)
        if "dense" in args.parts:
            part(summary, "dense", measure_dense, work, args.tokenizer, args, device)
        if "fsdp_fit" in args.parts:
            part(summary, "fsdp_fit", fsdp_fit, work, args.tokenizer, device, args.dry_run)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(summary, indent=1, default=str)
    print(text)
    if args.output is not None:
        with contextlib.suppress(OSError):
            args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
