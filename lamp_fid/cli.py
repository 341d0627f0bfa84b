"""The ``lamp-fid`` entry point: Lightning's fit/validate/test/predict plus lamp-fid's own commands.

Each of lamp-fid's own commands is a typed Python function; jsonargparse turns its signature and
docstring into the command's options and ``--help``. The Lightning subcommands go to LightningCLI.
Nothing happens at import time: DDP re-executes this module once per rank.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable

# command name -> (module, function, one-line summary). Imported lazily so `--help` is fast.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "download": ("lamp_fid.data.download", "download", "download a LaMP task/split from the official URLs"),
    "rank": ("lamp_fid.retrieval.rank", "rank", "rank every profile of a questions file (cached); write {id: [item ids]}"),
    "prompts": ("lamp_fid.prompts", "prompts", "write the exact passages the model reads, one JSON line per example"),
    "avocado": ("lamp_fid.data.avocado", "avocado", "build LaMP_6 files from your own licensed Avocado corpus"),
    "evaluate": ("lamp_fid.evaluate", "evaluate", "score predictions against golds with the official metrics"),
    "tune": ("lamp_fid.tune", "tune", "grid of retrievers x k on dev: the paper's tuned profile"),
    "report": ("lamp_fid.report", "report", "collect finished runs into tables and plots"),
    "submit": ("lamp_fid.submit", "submit", "package test predictions for the LaMP leaderboard"),
    "demo": ("lamp_fid.demo", "demo", "offline demo: personalized FiD and PPlug vs the non-personalized baseline"),
    "demo-data": ("lamp_fid.data.demo", "demo_data", "the offline demo's data, tokenizer, tiny T5 and user encoder"),
    "distill": ("lamp_fid.distill.command", "distill", "train a dense retriever towards the FiD reader's passage scores"),
    "demo-distill": ("lamp_fid.demo_distill", "demo_distill", "offline demo: distilled retriever vs BM25 where words mislead"),
    "distill-loop": ("lamp_fid.distill.loop", "distill_loop", "iterate reader -> scores -> distilled retriever, N rounds (restartable)"),
}
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: how a shell reports a producer whose reader went away
LIGHTNING_COMMANDS = {
    "fit": "train a model (FiD, IPA or non-personalized)",
    "validate": "evaluate on the dev split",
    "test": "evaluate on a split with gold outputs (no checkpoint: the pretrained model zero-shot)",
    "predict": "write predictions in the official LaMP format",
}


def _usage() -> str:
    lines = ["usage: lamp-fid <command> [options]   (lamp-fid <command> --help for its options)", ""]
    lines.append("training and evaluation (Lightning CLI):")
    lines += [f"  {name:<10} {text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines.append("")
    lines.append("data, retrieval, prompts and results:")
    lines += [f"  {name:<10} {text}" for name, (_, _, text) in COMMANDS.items()]
    return "\n".join(lines)


def _load(name: str) -> Callable:
    module, func, _ = COMMANDS[name]
    return getattr(importlib.import_module(module), func)


def run_command(name: str, args: list[str]):
    """Run one of lamp-fid's own commands with jsonargparse over the function's signature."""
    from jsonargparse import auto_cli

    func = _load(name)
    return auto_cli(func, args=args, as_positional=False, prog=f"lamp-fid {name}")


def _os_error(err: OSError) -> str:
    """``<reason>: <path>`` of an OSError, on one line; for a rename (an atomic write's temp file
    onto its target) the path is the target, the one the user named."""
    reason = err.strerror or str(err) or type(err).__name__
    path = err.filename2 if err.filename2 is not None else err.filename
    if path is None:
        return reason
    return f"{reason}: {os.fsdecode(path) if isinstance(path, (str, bytes)) else path}"


def main(args: list[str] | None = None):
    """Entry point of the ``lamp-fid`` console script; ``args`` defaults to ``sys.argv[1:]``."""
    from lamp_fid.errors import LaMPError

    args = list(sys.argv[1:] if args is None else args)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from lamp_fid import __version__

        print(f"lamp-fid {__version__}")
        return 0
    name = args[0]
    try:
        if name in COMMANDS:
            run_command(name, args[1:])
            sys.stdout.flush()  # a closed pipe must fail here, not in the interpreter's last flush
            return 0
        if name in LIGHTNING_COMMANDS:
            from lamp_fid.train import lightning_main

            lightning_main(args)
            sys.stdout.flush()
            return 0
    except LaMPError as err:
        print(f"lamp-fid {name}: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except BrokenPipeError:
        # the reader went away (`lamp-fid rank ... | head -1`): stop quietly, with the status of a
        # process killed by SIGPIPE as other Unix tools report it; stdout goes to devnull so the
        # interpreter's final flush cannot complain
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is no file (captured, or closed)
            pass
        raise SystemExit(EXIT_BROKEN_PIPE) from None
    except OSError as err:  # disk full, permission denied, a directory given as a file name, ...
        print(f"lamp-fid {name}: error: {_os_error(err)}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(f"lamp-fid {name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"lamp-fid: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    sys.exit(main())
