"""The NAS-Bench-201 cell: operations, edges and the benchmark's cell strings.

A NAS-Bench-201 cell has 4 nodes; every earlier node feeds every later node, so the cell has
6 edges, each carrying one of 5 operations. The benchmark writes a cell as

    |op~0|+|op~0|op~1|+|op~0|op~1|op~2|

one `|`-delimited group per node 1..3, each listing that node's inputs in order; `op~k` is the
operation on the edge from node k. Sources: Dong & Yang, "NAS-Bench-201", ICLR 2020.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Candidate operations, in the order the alphas of a search use (one alpha row per edge).
OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")

# Edges as (to_node, from_node), in the order they appear in a cell string.
EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
NUM_NODES = 4
NUM_CELLS = len(OPS) ** len(EDGES)  # 15,625

_TOKEN = re.compile(r"([a-z0-9_]+)~([0-9]+)")


class CellError(ValueError):
    """A cell string, operation list or index that is not a NAS-Bench-201 cell."""


def _expected_form() -> str:
    return "|op~0|+|op~0|op~1|+|op~0|op~1|op~2| with op one of " + ", ".join(OPS)


@dataclass(frozen=True)
class Cell:
    """A NAS-Bench-201 cell: one operation name per edge, in the order of `EDGES`."""

    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        ops = tuple(self.ops)
        if len(ops) != len(EDGES):
            raise CellError(
                f"a NAS-Bench-201 cell has {len(EDGES)} edges, got {len(ops)} operations: {ops!r}"
            )
        for op in ops:
            if op not in OPS:
                raise CellError(f"unknown operation {op!r}; expected one of {', '.join(OPS)}")
        object.__setattr__(self, "ops", ops)

    @classmethod
    def from_string(cls, text: str) -> "Cell":
        """Parse the benchmark's string form, raising CellError that names the bad token."""
        if not isinstance(text, str):
            raise CellError(f"a cell string must be a str, got {type(text).__name__}: {text!r}")
        if any(character.isspace() for character in text):
            raise CellError(f"cell string {text!r} contains whitespace; expected {_expected_form()}")
        groups = text.split("+")
        if len(groups) != NUM_NODES - 1:
            raise CellError(
                f"cell string {text!r} has {len(groups)} node {'group' if len(groups) == 1 else 'groups'} "
                f"separated by '+', "
                f"expected {NUM_NODES - 1}: {_expected_form()}"
            )
        ops: list[str] = []
        for node, group in enumerate(groups, start=1):
            if len(group) < 2 or not group.startswith("|") or not group.endswith("|"):
                raise CellError(
                    f"node {node} group {group!r} in {text!r} must start and end with '|'; "
                    f"expected {_expected_form()}"
                )
            tokens = group[1:-1].split("|")
            if len(tokens) != node:
                raise CellError(
                    f"node {node} group {group!r} in {text!r} has {len(tokens)} edges, "
                    f"expected {node} (one from each earlier node)"
                )
            for source, token in enumerate(tokens):
                match = _TOKEN.fullmatch(token)
                if match is None:
                    raise CellError(
                        f"token {token!r} of node {node} in {text!r} is not of the form op~k"
                    )
                op, index = match.group(1), int(match.group(2))
                if op not in OPS:
                    raise CellError(
                        f"unknown operation {op!r} in token {token!r}; "
                        f"expected one of {', '.join(OPS)}"
                    )
                if index != source:
                    raise CellError(
                        f"token {token!r} of node {node} in {text!r} names input node {index}, "
                        f"expected {source} (inputs are listed in order 0..{node - 1})"
                    )
                ops.append(op)
        return cls(tuple(ops))

    def to_string(self) -> str:
        groups = []
        position = 0
        for node in range(1, NUM_NODES):
            tokens = [f"{self.ops[position + source]}~{source}" for source in range(node)]
            groups.append("|" + "|".join(tokens) + "|")
            position += node
        return "+".join(groups)

    def __str__(self) -> str:
        return self.to_string()

    def edge_op(self, to_node: int, from_node: int) -> str:
        return self.ops[EDGES.index((to_node, from_node))]

    def to_dict(self) -> dict[str, str]:
        """Return the cell as {"to<-from": op}, for logs and JSON."""
        return {f"{to}<-{src}": op for (to, src), op in zip(EDGES, self.ops)}


def parse_cell(cell: "Cell | str | tuple[str, ...] | list[str]") -> Cell:
    """Accept a Cell, a cell string or a sequence of 6 operation names."""
    if isinstance(cell, Cell):
        return cell
    if isinstance(cell, str):
        return Cell.from_string(cell)
    if isinstance(cell, (tuple, list)):
        return Cell(tuple(cell))
    raise CellError(f"cannot read a NAS-Bench-201 cell from {type(cell).__name__}: {cell!r}")


def cell_from_alphas(alphas) -> Cell:
    """Derive the discrete cell: the strongest operation on each edge (argmax of its row).

    `alphas` is a (6, 5) tensor or nested list whose rows follow `EDGES` and columns `OPS`.
    Softmax does not change a row's argmax, so raw alphas and their softmax give the same cell.
    """
    import torch

    weights = torch.as_tensor(alphas)
    if weights.shape != (len(EDGES), len(OPS)):
        raise CellError(
            f"alphas must have shape ({len(EDGES)}, {len(OPS)}), got {tuple(weights.shape)}"
        )
    return Cell(tuple(OPS[i] for i in weights.argmax(dim=1).tolist()))
