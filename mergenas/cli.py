"""The `mergenas` command line: search, lookup."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mergenas.presets import PRESET_NAMES, PRESET_NOTES


def _add_search_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "search",
        help="run a DARTS or MergeNAS architecture search",
        description="Run a first-order DARTS or MergeNAS search on CIFAR-10 and write the run "
        "directory: config.json, log.jsonl (one line per epoch), checkpoint.pt and result.json.",
        epilog="presets (nb201): " + "; ".join(f"{name}: {note}" for name, note in PRESET_NOTES["nb201"].items()),
    )
    parser.add_argument("--space", default="nb201", choices=["nb201", "darts"], help="search space: nb201 (NAS-Bench-201) or darts (the DARTS/ENAS micro space); default nb201")
    parser.add_argument("--method", default="mergenas", choices=["darts", "mergenas"], help="supernet (default mergenas)")
    parser.add_argument("--preset", default="cpu", choices=list(PRESET_NAMES), help="settings to start from (default cpu)")
    parser.add_argument("--epochs", type=int, help="search epochs (default: from the preset)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--weight-decay", type=float, default=3e-4, help="weight decay of the network weights (default 3e-4; the paper also uses 1e-2 and 2e-2)")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: from the preset)")
    parser.add_argument("--train-limit", type=int, help="use only the first N CIFAR-10 training images, split in two halves (default: from the preset)")
    parser.add_argument("--cells-per-stage", type=int, help="cells per stage N; the benchmark's network has 5 (default: from the preset)")
    parser.add_argument("--lr", type=float, default=0.025, help="initial learning rate of the weights (default 0.025, cosine to 0.001)")
    parser.add_argument("--arch-lr", type=float, help="Adam learning rate of the alphas (default: from the preset; 3e-4 on nb201, 1e-4 on darts)")
    parser.add_argument("--order", type=int, default=1, choices=[1, 2], help="1: first-order DARTS step; 2: the unrolled second-order step (default 1)")
    parser.add_argument("--cells", type=int, help="darts space: cells of the supernet (default: from the preset; the paper uses 8)")
    parser.add_argument(
        "--separate-parameter-free",
        action="store_true",
        help="mergenas only: add skip and avg-pool beside the merged convolution instead of inside its kernel",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (default auto: cuda when available)")
    parser.add_argument("--data-root", help="data folder (default: $MERGENAS_DATA, else data/)")
    parser.add_argument("--out", help="run directory (default runs/<space>-<method>-seed<seed>)")
    parser.add_argument("--overwrite", action="store_true", help="start again in an --out that already holds a run")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR with its stored settings")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run_search)


def _run_search(args: argparse.Namespace) -> int:
    from mergenas import search as search_module

    if args.resume:
        result = search_module.resume(args.resume, progress=not args.quiet, epochs=args.epochs)
        run_dir = Path(args.resume)
    else:
        config = search_module.SearchConfig(
            space=args.space,
            method=args.method,
            preset=args.preset,
            epochs=args.epochs,
            seed=args.seed,
            batch_size=args.batch_size,
            train_limit=args.train_limit,
            cells_per_stage=args.cells_per_stage,
            cells=args.cells,
            order=args.order,
            weight_decay=args.weight_decay,
            lr=args.lr,
            arch_lr=args.arch_lr,
            merge_parameter_free=not args.separate_parameter_free,
            device=args.device,
            data_root=args.data_root,
        )
        run_dir = Path(args.out or f"runs/{args.space}-{args.method}-seed{args.seed}")
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


def _run_lookup(args: argparse.Namespace) -> int:
    from mergenas import benchmarks

    query: int | str = int(args.cell) if args.cell.strip().lstrip("-").isdigit() else args.cell
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
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_search_parser(subparsers)
    _add_lookup_parser(subparsers)
    from mergenas.train_cli import add_parser as add_train_parser

    add_train_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from mergenas.errors import USER_ERRORS

    try:
        return args.handler(args)
    except USER_ERRORS as error:
        print(f"mergenas {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mergenas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
