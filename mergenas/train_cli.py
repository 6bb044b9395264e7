"""The `mergenas train` subcommand: train a DARTS-space genotype from scratch on CIFAR-10."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mergenas.presets import PRESET_NAMES


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a DARTS-space genotype from scratch and report its test error",
        description="Train the network of a DARTS-space genotype on CIFAR-10 and write the run "
        "directory: config.json, log.jsonl (one line per epoch), checkpoint.pt and result.json "
        "(test accuracy and parameters in millions).",
        epilog="presets: paper: 20 cells, C=36, 600 epochs, batch 96, all images (a GPU); "
        "cpu: 8 cells, C=16, 2 epochs on 1,000 images; ci: a smoke test of seconds",
    )
    parser.add_argument("--genotype", help="a genotype name (MERGENAS_PAPER, DARTS_V2) or a JSON file such as a search's result.json (default MERGENAS_PAPER)")
    parser.add_argument("--preset", choices=list(PRESET_NAMES), help="settings to start from (default cpu)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: from the preset)")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: from the preset)")
    parser.add_argument("--train-limit", type=int, help="train on the first N CIFAR-10 training images only (default: from the preset)")
    parser.add_argument("--test-limit", type=int, help="test on the first N CIFAR-10 test images only (default: from the preset)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to run (default auto: cuda when available)")
    parser.add_argument("--data-root", help="data folder (default: $MERGENAS_DATA, else data/)")
    parser.add_argument("--out", help="run directory (default runs/train-<genotype>-seed<seed>)")
    parser.add_argument("--overwrite", action="store_true", help="start again in an --out that already contains a run")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR with its stored settings; any other setting given must equal the stored one")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from mergenas import train as train_module
    from mergenas.checkpoint import RunInterrupted
    from mergenas.spaces.darts import GenotypeError

    try:
        settings = {
            "genotype": args.genotype,
            "preset": args.preset,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "train_limit": args.train_limit,
            "test_limit": args.test_limit,
            "seed": args.seed,
            "device": args.device,
            "data_root": args.data_root,
        }
        given = {key: value for key, value in settings.items() if value is not None}
        if args.resume:
            run_dir = Path(args.resume)
            _check_resume_settings(run_dir, given)
            result = train_module.resume(run_dir, progress=not args.quiet)
        else:
            defaults = {"genotype": "MERGENAS_PAPER", "preset": "cpu", "seed": 0, "device": "auto"}
            config = train_module.TrainConfig(**{**settings, **{k: v for k, v in defaults.items() if settings[k] is None}})
            run_dir = Path(args.out or f"runs/train-{Path(config.genotype).stem}-seed{config.seed}")
            result = train_module.train(config, run_dir, overwrite=args.overwrite, progress=not args.quiet)
    except (train_module.TrainError, GenotypeError) as error:
        print(f"mergenas train: error: {error}", file=sys.stderr)
        return 2
    except RunInterrupted as error:
        print(f"mergenas train: {error}", file=sys.stderr)
        return error.exit_status
    print(f"run directory: {run_dir}")
    print(f"test error: {result['test_error']:.2f}% on {result['test_images']} images")
    print(f"parameters: {result['parameters_m']:.2f} M ({result['parameters']:,})")
    return 0


def _check_resume_settings(run_dir: Path, given: dict) -> None:
    """Raise TrainError listing every given setting that differs from the run's stored one."""
    import json

    from mergenas.checkpoint import setting_differences
    from mergenas.train import CONFIG_NAME, TrainError

    config_path = run_dir / CONFIG_NAME
    if not config_path.exists():
        return  # resume() reports the missing run
    differences = setting_differences(json.loads(config_path.read_text()), given)
    if differences:
        raise TrainError(
            f"--resume {run_dir} continues the run with its stored settings, but these differ: "
            + "; ".join(differences)
            + ". Drop them from the command, or start a new run with another --out."
        )
