"""The `mergenas` command line: search, lookup, train."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from mergenas.presets import PRESET_NAMES, PRESET_NOTES


# Exit statuses of `mergenas search`, also listed in its --help.
EXIT_NON_FINITE_LOSS = 1
EXIT_INVALID_INPUT = 2

# Search options that map one-to-one to SearchConfig fields (option dest -> field name). Their
# argparse default is None, so a value that is not None was given on the command line.
_SETTING_OPTIONS = {
    "space": "space",
    "method": "method",
    "preset": "preset",
    "epochs": "epochs",
    "seed": "seed",
    "weight_decay": "weight_decay",
    "batch_size": "batch_size",
    "train_limit": "train_limit",
    "cells_per_stage": "cells_per_stage",
    "lr": "lr",
    "arch_lr": "arch_lr",
    "order": "order",
    "cells": "cells",
    "channels": "channels",
    "device": "device",
    "deterministic": "deterministic",
    "data_root": "data_root",
}


def _add_search_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "search",
        help="run a DARTS or MergeNAS architecture search",
        description="Run a DARTS or MergeNAS search on CIFAR-10 and write the run directory: "
        "config.json, log.jsonl (one line per epoch), checkpoint.pt (after every epoch, and on "
        "Ctrl-C or SIGTERM) and result.json.",
        epilog="presets (nb201): "
        + "; ".join(f"{name}: {note}" for name, note in PRESET_NOTES["nb201"].items())
        + ". Presets (darts): "
        + "; ".join(f"{name}: {note}" for name, note in PRESET_NOTES["darts"].items())
        + ". Resuming: --resume RUN_DIR continues from the settings stored in RUN_DIR. Only --epochs "
        "may differ from the stored settings; any other setting given with a different value is "
        "rejected, except --data-root, which may name a new location of the same data (the "
        "checkpoint stores its checksum). Exit status: 0 finished; "
        f"{EXIT_NON_FINITE_LOSS} the loss became NaN or infinite (the last good checkpoint is kept); "
        f"{EXIT_INVALID_INPUT} invalid input; 130 (SIGINT) or 143 (SIGTERM) stopped after saving a "
        "checkpoint.",
    )
    parser.add_argument("--space", choices=["nb201", "darts"], help="search space: nb201 (NAS-Bench-201) or darts (the DARTS/ENAS micro space); default nb201")
    parser.add_argument("--method", choices=["darts", "mergenas"], help="supernet (default mergenas)")
    parser.add_argument("--preset", choices=list(PRESET_NAMES), help="settings to start from (default cpu)")
    parser.add_argument("--epochs", type=int, help="search epochs (default: from the preset); the one setting that may change with --resume")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--weight-decay", type=float, help="weight decay of the network weights (default 3e-4; the paper also uses 1e-2 and 2e-2)")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: from the preset)")
    parser.add_argument("--train-limit", type=int, help="use only the first N CIFAR-10 training images, split in two halves (default: from the preset)")
    parser.add_argument("--cells-per-stage", type=int, help="cells per stage N; the benchmark's network has 5 (default: from the preset)")
    parser.add_argument("--lr", type=float, help="initial learning rate of the weights (default 0.025, cosine to 0.001)")
    parser.add_argument("--arch-lr", type=float, help="Adam learning rate of the alphas (default: from the preset; 3e-4 on nb201, 1e-4 on darts)")
    parser.add_argument("--order", type=int, choices=[1, 2], help="1: first-order DARTS step; 2: the unrolled second-order step (default 1)")
    parser.add_argument("--cells", type=int, help="darts space: cells of the supernet (default: from the preset; the paper uses 8)")
    parser.add_argument("--channels", type=int, help="channels of the first stage; the benchmark's network has 16 (default 16)")
    parser.add_argument(
        "--separate-parameter-free",
        action="store_const",
        const=True,
        help="mergenas only: add skip and avg-pool beside the merged convolution instead of inside its kernel",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to run (default auto: cuda when available)")
    parser.add_argument(
        "--deterministic",
        action="store_const",
        const=True,
        help="use torch's deterministic kernels (torch.use_deterministic_algorithms), so GPU runs "
        "repeat exactly, at some cost in speed; CPU runs repeat without it",
    )
    parser.add_argument("--data-root", help="data folder (default: $MERGENAS_DATA, else data/)")
    parser.add_argument("--out", help="run directory (default runs/<space>-<method>-seed<seed>)")
    parser.add_argument("--overwrite", action="store_true", help="start again in an --out that already contains a run; its files are replaced only once the new run has loaded its data")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint, with its stored settings")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run_search)


def _explicit_settings(args: argparse.Namespace) -> dict:
    """Return the search settings given on the command line, as SearchConfig fields."""
    settings = {
        field: getattr(args, option)
        for option, field in _SETTING_OPTIONS.items()
        if getattr(args, option) is not None
    }
    if args.separate_parameter_free:
        settings["merge_parameter_free"] = False
    return settings


def _run_search(args: argparse.Namespace) -> int:
    from mergenas import search as search_module

    settings = _explicit_settings(args)
    if args.resume:
        if args.overwrite:
            raise search_module.SearchError("--resume and --overwrite exclude each other; pass one of them")
        if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
            raise search_module.SearchError(
                f"--out {args.out} differs from --resume {args.resume}; a resumed run stays in its "
                "directory, so drop --out"
            )
        run_dir = Path(args.resume)
        result = search_module.resume(run_dir, progress=not args.quiet, settings=settings)
    else:
        config = search_module.SearchConfig(**settings)
        run_dir = Path(args.out or f"runs/{config.space}-{config.method}-seed{config.seed}")
        result = search_module.search(config, run_dir, overwrite=args.overwrite, progress=not args.quiet)
    print(f"run directory: {run_dir}")
    if "genotype" in result:
        print(f"genotype: {json.dumps(result['genotype'])}")
        return 0
    print(f"cell:  {result['cell']}")
    if result.get("index") is not None:
        print(f"index: {result['index']}")
    print(_format_accuracy(result.get("nb201")))
    return 0


def _format_accuracy(accuracy: dict | None) -> str:
    if accuracy is None:
        return "NAS-Bench-201 accuracy: not available (no benchmark table under the data root)"
    return (
        "NAS-Bench-201 test accuracy: "
        f"CIFAR-10 {accuracy['cifar10']:.2f}  CIFAR-100 {accuracy['cifar100']:.2f}  "
        f"ImageNet16-120 {accuracy['imagenet16_120']:.2f}"
    )


def _add_lookup_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "lookup",
        help="print a NAS-Bench-201 cell's test accuracies",
        description="Print the NAS-Bench-201 test accuracies (CIFAR-10, CIFAR-100, ImageNet16-120) "
        "of a cell given as its string or its index 0..15624.",
    )
    parser.add_argument("cell", help="cell string such as '|nor_conv_3x3~0|+|...|' or an index 0..15624")
    parser.add_argument("--data-root", help="data folder (default: $MERGENAS_DATA, else data/)")
    parser.add_argument("--benchmark-file", help="the official NAS-Bench-201 .pth file, read through nas_201_api instead of the table")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=_run_lookup)


def _lookup_query(text: str) -> int | str:
    """Return the benchmark index or the cell string that `text` names, checked before any file is read."""
    from mergenas.spaces.nb201 import NUM_CELLS, CellError, parse_cell

    if text.strip().lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < NUM_CELLS:
            raise CellError(f"cell index {index} is outside the NAS-Bench-201 range 0..{NUM_CELLS - 1}; pass an index in that range or a cell string")
        return index
    try:
        parse_cell(text)
    except CellError as error:
        raise CellError(f"invalid cell {text!r}: {error}") from None
    return text


def _run_lookup(args: argparse.Namespace) -> int:
    from mergenas import benchmarks

    query = _lookup_query(args.cell)
    if args.benchmark_file:
        source = benchmarks.NB201API.from_file(args.benchmark_file)
        table = None
    else:
        source = table = benchmarks.load_table(args.data_root)
    accuracy = source.accuracy(query)
    if table is not None:
        index = table.index_of(query) if isinstance(query, str) else query
        cell = table.cell_at(index).to_string()
    else:
        index, cell = None, str(query)
    if args.json:
        print(json.dumps({"cell": cell, "index": index, "nb201": accuracy.to_dict()}))
    else:
        print(f"cell:  {cell}")
        if index is not None:
            print(f"index: {index}")
        print(_format_accuracy(accuracy.to_dict()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mergenas",
        description="MergeNAS: differentiable architecture search with one merged convolution per edge.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    parser.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download CIFAR-10 into the data root when it is missing "
        "(needs a network connection; the same as MERGENAS_DOWNLOAD=1)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_search_parser(subparsers)
    _add_lookup_parser(subparsers)
    from mergenas.train_cli import add_parser as add_train_parser

    add_train_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.download:
        from mergenas.data import DOWNLOAD_ENV_VAR

        os.environ[DOWNLOAD_ENV_VAR] = "1"
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from mergenas.errors import USER_ERRORS

    from mergenas.checkpoint import NonFiniteLossError, RunInterrupted

    try:
        return args.handler(args)
    except NonFiniteLossError as error:
        print(f"mergenas {args.command}: error: {error}", file=sys.stderr)
        return EXIT_NON_FINITE_LOSS
    except USER_ERRORS as error:
        print(f"mergenas {args.command}: error: {error}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    except RunInterrupted as error:
        print(f"mergenas {args.command}: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print(f"mergenas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
