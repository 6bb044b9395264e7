"""Benchmark one search iteration of the DARTS, MergeNAS and discrete NAS-Bench-201 networks.

Prints a table (network, weight parameters, seconds per iteration as median [min-max], peak
memory of the iteration in MiB) and the three ratios against their targets. Progress goes to
stderr. See docs/benchmarks.md for what is measured and a recorded run.

    python scripts/benchmark.py --batch-size 64 --cells-per-stage 5 --repeats 10 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from pathlib import Path

import torch

from mergenas.profiling import NETWORKS, TARGETS, Comparison, compare, op_breakdown, resolve_device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument(
        "--cells-per-stage", type=int, default=5, help="cells per stage; 5 gives the 17-cell network (default 5)"
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed iterations per network (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per network first (default 2)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device to run on; auto (the default) uses CUDA when it is available")
    parser.add_argument(
        "--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS), help="networks to measure (default: all three)"
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="run every network in the channels_last memory format"
    )
    parser.add_argument("--json", type=Path, help="also write the measurements and ratios to this JSON file")
    parser.add_argument(
        "--op-breakdown",
        action="store_true",
        help="after the benchmark, print a torch.profiler table of the top operators per network",
    )
    return parser.parse_args(argv)


def machine_description(device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    description = {
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.startswith("cuda"):
        description["gpu"] = torch.cuda.get_device_name(0)
    return description


def format_table(comparison: Comparison) -> str:
    header = f"{'network':<10} {'parameters':>11} {'s/iter median [min-max]':>26} {'spread':>7} {'peak MiB':>9} {'total MiB':>10}"
    lines = [header, "-" * len(header)]
    for m in comparison.measurements.values():
        timing = f"{m.median_s:.3f} [{m.min_s:.3f}-{m.max_s:.3f}]"
        lines.append(
            f"{m.network:<10} {m.parameters:>11,} {timing:>26} {m.spread:>6.0%} {m.peak_mib:>9.0f} {m.peak_total_mib:>10.0f}"
        )
    return "\n".join(lines)


def format_targets(comparison: Comparison) -> str:
    ratios = comparison.ratios()
    lines = []
    for target in TARGETS:
        value = ratios[target.ratio]
        met = target.check(value)
        if met is None:
            verdict, value_text = "n/a ", "not measured"
        else:
            verdict, value_text = ("PASS" if met else "MISS"), f"{value:.2f}"
        sign = ">=" if target.at_least else "<="
        lines.append(f"{verdict} {target.ratio} = {value_text} (target {sign} {target.bound}): {target.description}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    try:
        device = resolve_device(args.device)
        comparison = compare(
            tuple(args.networks),
            batch_size=args.batch_size,
            cells_per_stage=args.cells_per_stage,
            repeats=args.repeats,
            warmup=args.warmup,
            device=device,
            channels_last=args.channels_last,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    machine = machine_description(device)
    print(
        f"batch {args.batch_size}, {3 * args.cells_per_stage + 2} cells ({args.cells_per_stage} per stage), "
        f"{args.repeats} repeats, device {device}, channels_last {args.channels_last}"
    )
    print(", ".join(f"{key} {value}" for key, value in machine.items()))
    print("peak MiB: memory one iteration needs on top of the built model; total MiB: the whole process's peak")
    print(format_table(comparison))
    print(format_targets(comparison))

    if args.json is not None:
        record = {"settings": vars(args) | {"json": str(args.json), "device": device}, "machine": machine}
        record.update(comparison.to_dict())
        args.json.write_text(json.dumps(record, indent=2) + "\n")

    if args.op_breakdown:
        for name in args.networks:
            print(f"\ntorch.profiler, one iteration of {name}:")
            print(op_breakdown(name, args.batch_size, args.cells_per_stage, device, args.channels_last))
    return 0


if __name__ == "__main__":
    sys.exit(main())
