"""The DARTS/ENAS micro search space: operations, genotypes and their JSON form.

A cell has two input nodes (the outputs of the two previous cells) and 4 intermediate nodes.
Intermediate node i (0..3) may read every earlier node, so it has 2 + i candidate edges and the
cell has 2 + 3 + 4 + 5 = 14 edges. A derived cell keeps two inputs per node, each with one
operation, and outputs the concatenation of the 4 intermediate nodes. A network has normal cells
(stride 1) and reduction cells (stride 2 on the edges from the input nodes). Sources: Liu et al.,
"DARTS: Differentiable Architecture Search", ICLR 2019; Wang et al., "MergeNAS: Merge Operations
into One for Differentiable Architecture Search", IJCAI 2020.

Genotype input indices follow DARTS: 0 and 1 are the cell inputs (the cells two back and one
back), and 2..5 are the intermediate nodes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

# Candidate operations, in the column order of the alphas.
OPS: tuple[str, ...] = (
    "none",
    "skip_connect",
    "max_pool_3x3",
    "avg_pool_3x3",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
# Operations that MergeNAS merges into the one shared separable convolution of an edge.
SEPARABLE_OPS: tuple[str, ...] = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")

NUM_INPUTS = 2
NUM_NODES = 4
INPUTS_PER_NODE = 2
SPACE_NAME = "darts"

# Edges as (node, input), node 0..3 and input 0..node+1, in the row order of the alphas.
EDGES: tuple[tuple[int, int], ...] = tuple(
    (node, source) for node in range(NUM_NODES) for source in range(NUM_INPUTS + node)
)


class GenotypeError(ValueError):
    """A genotype, genotype file or name that is not a valid DARTS-space cell pair."""


@dataclass(frozen=True)
class Genotype:
    """A derived normal and reduction cell.

    `normal` and `reduce` list (op, input) pairs, two per intermediate node in node order, so
    entries 2i and 2i+1 feed node i. `normal_concat` and `reduce_concat` name the nodes whose
    outputs the cell concatenates (2..5, the 4 intermediate nodes).
    """

    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        for kind in ("normal", "reduce"):
            pairs = _checked_pairs(getattr(self, kind), kind)
            object.__setattr__(self, kind, pairs)
            concat = _checked_concat(getattr(self, f"{kind}_concat"), kind)
            object.__setattr__(self, f"{kind}_concat", concat)

    def to_dict(self) -> dict:
        """Return the genotype as plain JSON types, tagged with the search space."""
        return {
            "space": SPACE_NAME,
            "normal": [[op, source] for op, source in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, source] for op, source in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, data: object, origin: str = "genotype") -> "Genotype":
        """Build a genotype from `to_dict` output, raising GenotypeError that names `origin`."""
        if not isinstance(data, dict):
            raise GenotypeError(f"{origin} must be a JSON object, got {type(data).__name__}")
        space = data.get("space", SPACE_NAME)
        if space != SPACE_NAME:
            raise GenotypeError(
                f"{origin} belongs to search space {space!r}, but training needs a "
                f"{SPACE_NAME!r}-space genotype (the result.json of `mergenas search --space darts`)"
            )
        if "genotype" in data and "normal" not in data:
            return cls.from_dict(data["genotype"], origin)
        missing = [key for key in ("normal", "reduce") if key not in data]
        if missing:
            raise GenotypeError(
                f"{origin} is missing {', '.join(missing)}; expected the keys normal, reduce "
                "(lists of [op, input] pairs) and optionally normal_concat, reduce_concat"
            )
        default_concat = list(range(NUM_INPUTS, NUM_INPUTS + NUM_NODES))
        try:
            return cls(
                normal=data["normal"],
                normal_concat=data.get("normal_concat", default_concat),
                reduce=data["reduce"],
                reduce_concat=data.get("reduce_concat", default_concat),
            )
        except GenotypeError as error:
            raise GenotypeError(f"{origin}: {error}") from None


def _checked_pairs(pairs: object, kind: str) -> tuple[tuple[str, int], ...]:
    """Return `pairs` as a tuple of (op, input) tuples, or raise GenotypeError."""
    if isinstance(pairs, (str, bytes)) or not hasattr(pairs, "__len__"):
        raise GenotypeError(f"{kind} must be a list of [op, input] pairs, got {pairs!r}")
    expected = NUM_NODES * INPUTS_PER_NODE
    if len(pairs) != expected:
        raise GenotypeError(
            f"{kind} must have {expected} [op, input] pairs (2 per node), got {len(pairs)}"
        )
    checked = []
    for position, pair in enumerate(pairs):
        node = position // INPUTS_PER_NODE
        if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
            raise GenotypeError(f"{kind} entry {position} must be an [op, input] pair, got {pair!r}")
        op, source = pair
        if op not in OPS or op == "none":
            choices = ", ".join(name for name in OPS if name != "none")
            raise GenotypeError(f"{kind} entry {position} has unknown op {op!r}; expected one of {choices}")
        if isinstance(source, bool) or not isinstance(source, int):
            raise GenotypeError(f"{kind} entry {position} has input {source!r}; expected an int")
        if not 0 <= source < NUM_INPUTS + node:
            raise GenotypeError(
                f"{kind} entry {position} feeds node {node + NUM_INPUTS} from input {source}, "
                f"but that node can only read inputs 0..{NUM_INPUTS + node - 1}"
            )
        checked.append((op, source))
    return tuple(checked)


def _checked_concat(concat: object, kind: str) -> tuple[int, ...]:
    valid = range(NUM_INPUTS, NUM_INPUTS + NUM_NODES)
    if isinstance(concat, (str, bytes)) or not hasattr(concat, "__iter__"):
        raise GenotypeError(f"{kind}_concat must be a list of node indices, got {concat!r}")
    values = tuple(concat)
    if not values or any(isinstance(v, bool) or v not in valid for v in values):
        raise GenotypeError(f"{kind}_concat must list nodes from 2..5, got {list(values)!r}")
    return values


_CONCAT = (2, 3, 4, 5)

# DARTS (second order), the cell pair of Liu et al., ICLR 2019, as their public code lists it.
DARTS_V2 = Genotype(
    normal=(
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1), ("skip_connect", 0),
        ("skip_connect", 0), ("dil_conv_3x3", 2),
    ),
    normal_concat=_CONCAT,
    reduce=(
        ("max_pool_3x3", 0), ("max_pool_3x3", 1),
        ("skip_connect", 2), ("max_pool_3x3", 1),
        ("max_pool_3x3", 0), ("skip_connect", 2),
        ("skip_connect", 2), ("max_pool_3x3", 1),
    ),
    reduce_concat=_CONCAT,
)

# MergeNAS on CIFAR-10 (Wang et al., IJCAI 2020, Figure 2).
# NOTE: the figure's exact edges could not be checked here. This pair is reconstructed from its
# description only: a normal cell of sep_conv_3x3 with one sep_conv_5x5, and a reduction cell
# of max_pool_3x3 and skip_connect. The inputs of each edge are a plausible guess.
MERGENAS_PAPER = Genotype(
    normal=(
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1), ("sep_conv_5x5", 0),
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
    ),
    normal_concat=_CONCAT,
    reduce=(
        ("max_pool_3x3", 0), ("max_pool_3x3", 1),
        ("skip_connect", 2), ("max_pool_3x3", 1),
        ("max_pool_3x3", 0), ("skip_connect", 2),
        ("skip_connect", 2), ("max_pool_3x3", 1),
    ),
    reduce_concat=_CONCAT,
)

GENOTYPES: dict[str, Genotype] = {"DARTS_V2": DARTS_V2, "MERGENAS_PAPER": MERGENAS_PAPER}


def save_genotype(genotype: Genotype, path: str | Path) -> None:
    from mergenas import atomic

    atomic.write_json(path, genotype.to_dict())


def load_genotype(name_or_path: str | Path) -> Genotype:
    """Return a named genotype (see GENOTYPES) or read one from a JSON file.

    The file contains either a genotype object or a search's result.json with the genotype under the key `genotype`.
    """
    if isinstance(name_or_path, str) and name_or_path in GENOTYPES:
        return GENOTYPES[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise GenotypeError(
            f"genotype {str(name_or_path)!r} is neither a known name ({', '.join(GENOTYPES)}) "
            "nor an existing JSON file"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise GenotypeError(f"genotype file {path} is not valid JSON: {error}") from None
    return Genotype.from_dict(data, origin=f"genotype file {path}")


def _check_alphas(alphas: torch.Tensor, kind: str) -> None:
    expected = (len(EDGES), len(OPS))
    if tuple(alphas.shape) != expected:
        raise GenotypeError(f"{kind} alphas must have shape {expected}, got {tuple(alphas.shape)}")


def derive_cell(alphas: torch.Tensor) -> tuple[tuple[str, int], ...]:
    """Derive one cell from raw alphas (rows follow EDGES, columns OPS) as DARTS does.

    Each edge is scored by its strongest non-`none` op after the softmax over the edge's row.
    Each node keeps its two best-scored edges, which come from two different inputs because a
    node has one edge per input, and the strongest op of each. The softmax matters: a row with
    one large raw alpha can lose to a row whose alphas are smaller but more peaked.
    """
    alphas = torch.as_tensor(alphas).detach().cpu()
    _check_alphas(alphas, "cell")
    weights = torch.softmax(alphas.double(), dim=-1)
    none_column = OPS.index("none")
    weights[:, none_column] = -1.0  # never the strongest op

    pairs: list[tuple[str, int]] = []
    row = 0
    for node in range(NUM_NODES):
        rows = weights[row:row + NUM_INPUTS + node]  # (inputs, ops)
        best_weight, best_op = rows.max(dim=1)
        # Sort by weight, then by input index, so ties resolve the same way every time.
        ranked = sorted(range(len(rows)), key=lambda source: (-best_weight[source].item(), source))
        for source in sorted(ranked[:INPUTS_PER_NODE]):
            pairs.append((OPS[best_op[source].item()], source))
        row += NUM_INPUTS + node
    return tuple(pairs)


def genotype_from_alphas(normal_alphas: torch.Tensor, reduce_alphas: torch.Tensor) -> Genotype:
    return Genotype(
        normal=derive_cell(normal_alphas),
        normal_concat=_CONCAT,
        reduce=derive_cell(reduce_alphas),
        reduce_concat=_CONCAT,
    )
