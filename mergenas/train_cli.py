"""The `mergenas train` subcommand (training a derived DARTS-space network from scratch)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a derived network from scratch")
    parser.set_defaults(handler=_not_available)


def _not_available(args) -> int:
    raise SystemExit("mergenas train: not available in this version")
