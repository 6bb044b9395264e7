"""NAS-Bench-201 networks: the DARTS supernet, the MergeNAS supernet and a discrete network.

All three share the skeleton of Dong & Yang (NAS-Bench-201, ICLR 2020). A 3x3 stem is followed
by three stages of N cells at C, 2C and 4C channels, with a ResNet basic block of stride 2
between stages, then BN-ReLU, global average pooling and a linear classifier. N=5 and C=16 give the benchmark's
17-cell network. Only the edges differ:

- `darts`: one module per candidate operation, mixed by softmax(alpha) (Liu et al., DARTS).
- `mergenas`: one shared 3x3 kernel W per edge, so the edge is a single convolution with kernel
  M~ * W (Wang et al., MergeNAS, IJCAI 2020, Eq. 8 and Algorithm 1).
- `discrete`: one fixed operation per edge, as the benchmark trains a cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mergenas import ops as kernels
from mergenas.spaces.nb201 import EDGES, NUM_NODES, OPS, Cell, cell_from_alphas, parse_cell

MODES = ("darts", "mergenas", "discrete")
_CONV_OPS = ("nor_conv_1x1", "nor_conv_3x3")


def _batch_norm(channels: int, affine: bool) -> nn.BatchNorm2d:
    # Search networks normalise with batch statistics only, as NAS-Bench-201's searches do:
    # running statistics mixed over changing alphas would not describe any single network.
    return nn.BatchNorm2d(channels, affine=affine, track_running_stats=affine)


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, affine: bool):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride, padding=kernel_size // 2, bias=False),
            _batch_norm(c_out, affine),
        )


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def make_op(name: str, channels: int, affine: bool) -> nn.Module:
    """Build one NAS-Bench-201 operation at stride 1 (cells never change the resolution)."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(channels, channels, 1, 1, affine)
    if name == "nor_conv_3x3":
        return ReLUConvBN(channels, channels, 3, 1, affine)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f"unknown NAS-Bench-201 operation {name!r}; expected one of {', '.join(OPS)}")


class DartsEdge(nn.Module):
    """sum_o w_o * o(x) over all candidates, one module each (DARTS)."""

    def __init__(self, channels: int):
        super().__init__()
        self.candidates = nn.ModuleDict({name: make_op(name, channels, affine=False) for name in OPS})

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = 0
        for w, (name, op) in zip(weights, self.candidates.items()):
            if name == "none":  # contributes exactly zero; computing x * 0 would only cost time
                continue
            out = out + w * op(x)
        return out


@dataclass(frozen=True)
class MergeOptions:
    """Options for the operations of a MergeNAS edge that do not share its kernel.

    merge_parameter_free: True (the default, as the paper does on NAS-Bench-201) writes
        skip_connect and avg_pool_3x3 as fixed kernels inside the one convolution, so they
        see ReLU(x) and pass through the edge's BatchNorm, and the pooling counts padded zeros
        at the border. False adds them beside the convolution as DARTS does, on the raw input,
        with the benchmark's pooling (`count_include_pad=False`): two extra cheap ops per edge.
    """

    merge_parameter_free: bool = True


class MergedEdge(nn.Module):
    """One convolution per edge: ReLU, conv with kernel M~ * W (+ fixed kernels), BatchNorm."""

    def __init__(self, channels: int, options: MergeOptions = MergeOptions()):
        super().__init__()
        self.options = options
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Conv2d's default initialisation
        masks = kernels.op_masks(_CONV_OPS, 3)
        self.register_buffer("masks", torch.stack([masks[name] for name in _CONV_OPS]))
        self.bn = _batch_norm(channels, affine=False)
        self._conv_index = [OPS.index(name) for name in _CONV_OPS]

    def merged_kernel(self, weights: torch.Tensor) -> torch.Tensor:
        """Build the edge's kernel: (sum_o w_o M_o) * W, plus w_skip I + w_avg A when merged."""
        saliency = kernels.saliency_mask(weights[self._conv_index], self.masks.unbind(0))  # (3, 3)
        kernel = saliency * self.weight  # (C, C, 3, 3)
        if self.options.merge_parameter_free:
            # Built in the weight's dtype on every call (a few microseconds), so a float64 edge
            # gets an exact 1/9 rather than a float32 one cast up.
            channels, dtype, device = self.weight.shape[0], self.weight.dtype, self.weight.device
            identity = kernels.identity_kernel(channels, 3, dtype=dtype, device=device)
            avg_pool = kernels.avg_pool_kernel(channels, 3, 3, dtype=dtype, device=device)
            kernel = kernel + weights[OPS.index("skip_connect")] * identity
            kernel = kernel + weights[OPS.index("avg_pool_3x3")] * avg_pool
        return kernel

    def merged_conv(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Apply the edge's single convolution to ReLU(x), before normalisation."""
        return F.conv2d(F.relu(x), self.merged_kernel(weights), padding=1)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.merged_conv(x, weights))
        if not self.options.merge_parameter_free:
            out = out + weights[OPS.index("skip_connect")] * x
            pooled = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
            out = out + weights[OPS.index("avg_pool_3x3")] * pooled
        return out


class DiscreteEdge(nn.Module):
    def __init__(self, op: str, channels: int):
        super().__init__()
        self.op = make_op(op, channels, affine=True)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return self.op(x)


class Cell201(nn.Module):
    """Node j = sum over i < j of edge(i -> j)(node i); the output is node 3."""

    def __init__(self, edges: list[nn.Module]):
        super().__init__()
        self.edges = nn.ModuleList(edges)  # in the order of EDGES

    def forward(self, x: torch.Tensor, edge_weights: torch.Tensor | None) -> torch.Tensor:
        nodes = [x]
        for to_node in range(1, NUM_NODES):
            total = 0
            for e, (to, src) in enumerate(EDGES):
                if to == to_node:
                    weights = None if edge_weights is None else edge_weights[e]
                    total = total + self.edges[e](nodes[src], weights)
            nodes.append(total)
        return nodes[-1]


class ResNetBasicBlock(nn.Module):
    """The stride-2 block between stages: two ReLU-Conv-BN plus an avg-pool + 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, affine: bool):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, affine)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, affine)
        self.shortcut = nn.Sequential(
            nn.AvgPool2d(2, 2), nn.Conv2d(c_in, c_out, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class NB201Network(nn.Module):
    """The NAS-Bench-201 network in one of three modes: `darts`, `mergenas` or `discrete`.

    Search modes hold `alphas`, a (6, 5) parameter shared by all cells (rows follow EDGES,
    columns OPS). `discrete` needs `cell` and has no alphas.
    """

    def __init__(
        self,
        mode: str,
        cell: Cell | str | None = None,
        channels: int = 16,
        cells_per_stage: int = 5,
        num_classes: int = 10,
        merge_options: MergeOptions = MergeOptions(),
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown network mode {mode!r}; expected one of {', '.join(MODES)}")
        if mode == "discrete" and cell is None:
            raise ValueError("mode 'discrete' needs a cell, e.g. cell='|nor_conv_3x3~0|+...'")
        self.mode = mode
        self.cell = parse_cell(cell) if cell is not None else None
        affine = mode == "discrete"

        self.stem = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1, bias=False), _batch_norm(channels, affine)
        )
        layers: list[nn.Module] = []
        c = channels
        for stage in range(3):
            if stage > 0:
                layers.append(ResNetBasicBlock(c, 2 * c, affine))
                c *= 2
            for _ in range(cells_per_stage):
                layers.append(Cell201([self._make_edge(e, c, merge_options) for e in range(len(EDGES))]))
        self.layers = nn.ModuleList(layers)
        self.head = nn.Sequential(_batch_norm(c, affine), nn.ReLU(inplace=False))
        self.classifier = nn.Linear(c, num_classes)

        if mode != "discrete":
            self.alphas = nn.Parameter(1e-3 * torch.randn(len(EDGES), len(OPS)))
        else:
            self.register_parameter("alphas", None)

    def _make_edge(self, edge: int, channels: int, merge_options: MergeOptions) -> nn.Module:
        if self.mode == "darts":
            return DartsEdge(channels)
        if self.mode == "mergenas":
            return MergedEdge(channels, merge_options)
        return DiscreteEdge(self.cell.ops[edge], channels)

    def edge_weights(self) -> torch.Tensor | None:
        """softmax(alpha) per edge, shape (6, 5); None for a discrete network."""
        return None if self.alphas is None else F.softmax(self.alphas, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.edge_weights()
        out = self.stem(x)
        for layer in self.layers:
            out = layer(out, weights) if isinstance(layer, Cell201) else layer(out)
        out = self.head(out)
        out = out.mean(dim=(2, 3))  # global average pooling: (B, C)
        return self.classifier(out)

    def weight_parameters(self) -> list[nn.Parameter]:
        """Network weights, without the alphas (the weight optimiser's parameters)."""
        return [p for name, p in self.named_parameters() if name != "alphas"]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [] if self.alphas is None else [self.alphas]

    def num_weight_parameters(self) -> int:
        return sum(p.numel() for p in self.weight_parameters())

    def derive(self) -> Cell:
        """Derive the cell: the strongest operation on each edge (the fixed cell when discrete)."""
        if self.alphas is None:
            return self.cell
        return cell_from_alphas(self.alphas.detach())


def build_supernet(config) -> NB201Network:
    """Build the search supernet of a `SearchConfig`, whose `method` is the network mode."""
    return NB201Network(
        config.method,
        channels=config.channels,
        cells_per_stage=config.cells_per_stage,
        merge_options=MergeOptions(merge_parameter_free=config.merge_parameter_free),
    )


def describe_architecture(model: NB201Network, table) -> dict:
    """Describe the derived cell: its string, benchmark index and test accuracies (None without the table)."""
    cell = model.derive()
    entry = {"cell": cell.to_string(), "index": None, "nb201": None}
    if table is not None:
        entry["index"] = table.index_of(cell)
        entry["nb201"] = table.accuracy(cell).to_dict()
    return entry
