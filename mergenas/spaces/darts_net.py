"""DARTS-space networks: the DARTS supernet, the MergeNAS supernet and the evaluation network.

The search skeleton follows DARTS (Liu et al., ICLR 2019): a 3x3 stem with 3C channels, `cells`
cells with reduction cells at 1/3 and 2/3 of the depth (channels double there), global average
pooling and a linear classifier. Every cell has two input nodes, 4 intermediate nodes and 14
edges (see `mergenas.spaces.darts`). Separable convolutions are SINGLE (ReLU, depth-wise,
point-wise, BN), as ENAS and MergeNAS use them. The supernet edges differ by mode:

- `darts`: one module per candidate op, mixed by softmax(alpha).
- `mergenas`: one shared 9x9 depth-wise kernel W_d and one shared point-wise kernel W_p per edge
  (Wang et al., MergeNAS, IJCAI 2020, Eq. 12-13). The four separable ops become one separable
  convolution with the depth-wise kernel M~ * W_d, where M~ is the saliency mask. The
  parameter-free ops (skip_connect, max_pool_3x3, avg_pool_3x3) are added beside it as in DARTS,
  because merging them would need both kernels shared.

`DartsNetwork` is the network a genotype describes, trained from scratch (20 cells at C=36 in
the paper) with an auxiliary head and drop-path.
"""

from __future__ import annotations

import logging
import os
import resource

import torch
import torch.nn.functional as F
from torch import nn

from mergenas import ops as kernels
from mergenas.spaces.darts import (
    EDGES,
    NUM_INPUTS,
    NUM_NODES,
    OPS,
    SEPARABLE_OPS,
    Genotype,
    genotype_from_alphas,
)

log = logging.getLogger(__name__)

MODES = ("darts", "mergenas")
SHARED_KERNEL_SIZE = 9  # dil_conv_5x5 at rate 2 reads a 9x9 window


def _batch_norm(channels: int, affine: bool) -> nn.BatchNorm2d:
    # Search networks normalise with batch statistics only: running statistics averaged over
    # changing alphas would not describe any single network.
    return nn.BatchNorm2d(channels, affine=affine, track_running_stats=affine)


def reduction_positions(cells: int) -> tuple[int, int]:
    """Return the indices of the two reduction cells: 1/3 and 2/3 of the depth (6 and 13 of 20)."""
    return cells // 3, 2 * cells // 3


# -- operations ----------------------------------------------------------------------------


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, affine: bool):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride, padding=kernel_size // 2, bias=False),
            _batch_norm(c_out, affine),
        )


class SepConv(nn.Sequential):
    """One separable convolution: ReLU, k x k depth-wise (dilation `rate`), point-wise, BN."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, rate: int, affine: bool):
        padding = rate * (kernel_size - 1) // 2
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel_size, stride, padding, dilation=rate, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            _batch_norm(c_out, affine),
        )


class FactorizedReduce(nn.Module):
    """Halve the resolution with two 1x1 stride-2 convolutions on pixel grids offset by one.

    The offset branch reads x[1:, 1:] padded by one zero row and column at the far end, so both
    branches give ceil(H / 2) x ceil(W / 2) outputs for odd sizes as well.
    """

    def __init__(self, c_in: int, c_out: int, affine: bool):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.conv_a = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_b = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = _batch_norm(c_out, affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))  # same size as x
        return self.bn(torch.cat([self.conv_a(x), self.conv_b(shifted)], dim=1))


class Zero(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


def _pool(kind: str, stride: int) -> nn.Module:
    if kind == "max":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    # DARTS pools without counting the padded zeros.
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


def make_op(name: str, channels: int, stride: int, affine: bool) -> nn.Module:
    """Build one DARTS-space operation with `channels` in and out."""
    if name == "none":
        return Zero(stride)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(channels, channels, affine)
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        return _pool(name[:3], stride)
    if name in SEPARABLE_OPS:
        kernel_size, rate = _separable_geometry(name)
        return SepConv(channels, channels, kernel_size, stride, rate, affine)
    raise ValueError(f"unknown DARTS-space operation {name!r}; expected one of {', '.join(OPS)}")


def _separable_geometry(name: str) -> tuple[int, int]:
    """Return (kernel size, dilation rate) of a separable op name."""
    kernel_size = int(name[-1])
    rate = kernels.DIL_CONV_RATE if name.startswith("dil_conv") else 1
    return kernel_size, rate


# -- supernet edges ------------------------------------------------------------------------


class DartsEdge(nn.Module):
    """sum_o w_o * o(x) over all candidates, one module each (DARTS)."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        candidates = {}
        for name in OPS:
            op = make_op(name, channels, stride, affine=False)
            if "pool" in name:  # DARTS normalises the pools of a search edge
                op = nn.Sequential(op, _batch_norm(channels, affine=False))
            candidates[name] = op
        self.candidates = nn.ModuleDict(candidates)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = 0
        for w, (name, op) in zip(weights, self.candidates.items()):
            if name == "none":  # contributes exactly zero
                continue
            out = out + w * op(x)
        return out


class MergedEdge(nn.Module):
    """One separable convolution with kernels M~ * W_d and W_p, plus the parameter-free ops.

    BatchNorm without affine parameters removes any common scale of M~, so the normalised merged
    convolution is multiplied by the summed weight of the four separable ops. The balance
    between the separable family and the parameter-free ops then stays learnable, as in DARTS,
    where the same sum of weights multiplies normalised outputs.
    """

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        conv = nn.Conv2d(channels, channels, SHARED_KERNEL_SIZE, groups=channels, bias=False)
        self.depthwise = nn.Parameter(conv.weight.detach().clone())  # (C, 1, 9, 9)
        conv = nn.Conv2d(channels, channels, 1, bias=False)
        self.pointwise = nn.Parameter(conv.weight.detach().clone())  # (C, C, 1, 1)
        masks = kernels.op_masks(SEPARABLE_OPS, SHARED_KERNEL_SIZE)
        self.register_buffer("masks", torch.stack([masks[name] for name in SEPARABLE_OPS]))
        self.bn = _batch_norm(channels, affine=False)

        self.skip = make_op("skip_connect", channels, stride, affine=False)
        self.max_pool = nn.Sequential(_pool("max", stride), _batch_norm(channels, affine=False))
        self.avg_pool = nn.Sequential(_pool("avg", stride), _batch_norm(channels, affine=False))
        self._separable_index = [OPS.index(name) for name in SEPARABLE_OPS]

    def merged_separable(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Return the edge's one separable convolution of ReLU(x), before normalisation (Eq. 13)."""
        alphas = weights[self._separable_index]
        depthwise = kernels.merged_kernel(self.depthwise, alphas, self.masks.unbind(0))
        out = F.conv2d(
            F.relu(x), depthwise, stride=self.stride, padding=SHARED_KERNEL_SIZE // 2, groups=x.shape[1]
        )
        return F.conv2d(out, self.pointwise)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        separable_weight = weights[self._separable_index].sum()
        out = separable_weight * self.bn(self.merged_separable(x, weights))
        out = out + weights[OPS.index("skip_connect")] * self.skip(x)
        out = out + weights[OPS.index("max_pool_3x3")] * self.max_pool(x)
        return out + weights[OPS.index("avg_pool_3x3")] * self.avg_pool(x)


# -- cells ---------------------------------------------------------------------------------


def _preprocess(c_prev_prev: int, c_prev: int, channels: int, reduction_prev: bool, affine: bool):
    """Return the 1x1 (or factorised reduce) layers that bring both cell inputs to `channels`."""
    if reduction_prev:
        first = FactorizedReduce(c_prev_prev, channels, affine)
    else:
        first = ReLUConvBN(c_prev_prev, channels, 1, 1, affine)
    return first, ReLUConvBN(c_prev, channels, 1, 1, affine)


class SearchCell(nn.Module):
    """A supernet cell: every intermediate node sums one mixed edge from each earlier node."""

    def __init__(self, mode: str, c_prev_prev: int, c_prev: int, channels: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0, self.preprocess1 = _preprocess(c_prev_prev, c_prev, channels, reduction_prev, affine=False)
        edges = []
        for _, source in EDGES:
            stride = 2 if reduction and source < NUM_INPUTS else 1
            edge = DartsEdge(channels, stride) if mode == "darts" else MergedEdge(channels, stride)
            edges.append(edge)
        self.edges = nn.ModuleList(edges)  # in the order of EDGES

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        edge = 0
        for _ in range(NUM_NODES):
            node = 0
            for source, state in enumerate(states):
                node = node + self.edges[edge + source](state, weights[edge + source])
            edge += len(states)
            states.append(node)
        return torch.cat(states[NUM_INPUTS:], dim=1)  # (B, 4C, H, W)


class DartsSupernet(nn.Module):
    """The DARTS-space supernet in mode `darts` or `mergenas`.

    Holds `alphas_normal` and `alphas_reduce`, each (14, 8): rows follow EDGES, columns OPS.
    All normal cells share one set of alphas, and all reduction cells share the other.
    """

    def __init__(self, mode: str, channels: int = 16, cells: int = 8, num_classes: int = 10, stem_multiplier: int = 3):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown supernet mode {mode!r}; expected one of {', '.join(MODES)}")
        self.mode = mode
        c_stem = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(3, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))

        c_prev_prev, c_prev, c = c_stem, c_stem, channels
        reductions = reduction_positions(cells)
        reduction_prev = False
        layers = []
        for index in range(cells):
            reduction = index in reductions
            if reduction:
                c *= 2
            layers.append(SearchCell(mode, c_prev_prev, c_prev, c, reduction, reduction_prev))
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, NUM_NODES * c
        self.cells = nn.ModuleList(layers)
        self.classifier = nn.Linear(c_prev, num_classes)

        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(len(EDGES), len(OPS)))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(len(EDGES), len(OPS)))

    def edge_weights(self) -> torch.Tensor:
        """Return softmax(alpha) per edge, shape (2, 14, 8): normal cells first, then reduction."""
        return torch.stack([F.softmax(self.alphas_normal, dim=-1), F.softmax(self.alphas_reduce, dim=-1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normal, reduce = self.edge_weights().unbind(0)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, reduce if cell.reduction else normal)
        return self.classifier(s1.mean(dim=(2, 3)))

    def weight_parameters(self) -> list[nn.Parameter]:
        """Return the network weights without the alphas (the weight optimiser's parameters)."""
        return [p for name, p in self.named_parameters() if not name.startswith("alphas_")]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas_normal, self.alphas_reduce]

    def num_weight_parameters(self) -> int:
        return sum(p.numel() for p in self.weight_parameters())

    def derive(self) -> Genotype:
        """Derive the genotype: per node the two strongest inputs and their strongest op."""
        return genotype_from_alphas(self.alphas_normal.detach(), self.alphas_reduce.detach())


def build_supernet(config) -> DartsSupernet:
    """Build the supernet a `SearchConfig` requests (its `method` is the supernet mode).

    `merge_parameter_free` has no effect here: with separable convolutions the parameter-free
    ops cannot join the shared kernel, so they are always added beside it.
    """
    return DartsSupernet(config.method, channels=config.channels, cells=config.cells)


def genotype_summary(genotype: Genotype) -> str:
    """Return a one-line form of a genotype for logs, e.g. 'normal: sep_conv_3x3~0 ...'."""
    normal = " ".join(f"{op}~{source}" for op, source in genotype.normal)
    reduce = " ".join(f"{op}~{source}" for op, source in genotype.reduce)
    return f"normal: {normal} | reduce: {reduce}"


def describe_architecture(model: DartsSupernet, table=None) -> dict:
    """Return the derived genotype as JSON types, plus its one-line form under `cell`."""
    genotype = model.derive()
    return {"genotype": genotype.to_dict(), "cell": genotype_summary(genotype)}


# -- evaluation network --------------------------------------------------------------------


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples of x with probability `drop_prob` and rescale the rest by 1/keep."""
    keep = 1.0 - drop_prob
    mask = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(keep)
    return x * mask / keep


class EvalCell(nn.Module):
    """A derived cell: each intermediate node sums two ops on two earlier nodes."""

    def __init__(self, pairs, concat, c_prev_prev: int, c_prev: int, channels: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0, self.preprocess1 = _preprocess(c_prev_prev, c_prev, channels, reduction_prev, affine=True)
        self.sources = [source for _, source in pairs]
        self.concat = list(concat)
        self.ops = nn.ModuleList(
            make_op(op, channels, 2 if reduction and source < NUM_INPUTS else 1, affine=True)
            for op, source in pairs
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in range(NUM_NODES):
            total = 0
            for position in (2 * node, 2 * node + 1):
                op = self.ops[position]
                out = op(states[self.sources[position]])
                if self.training and drop_prob > 0 and not isinstance(op, nn.Identity):
                    out = drop_path(out, drop_prob)
                total = total + out
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """The DARTS auxiliary classifier on the 8x8 maps after the second reduction cell.

    DARTS pools 8x8 maps with a 5x5 window at stride 3 to 2x2. Adaptive pooling to 2x2 is used
    here instead so that other input sizes work too. On 8x8 maps its windows are 4x4 without
    overlap rather than 5x5 with one row of overlap.
    """

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AdaptiveAvgPool2d(2),
            nn.Conv2d(channels, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=False),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class DartsNetwork(nn.Module):
    """The network of a genotype, trained from scratch: `cells` cells at C=`channels`.

    `forward` returns (logits, auxiliary logits); the auxiliary logits are None in eval mode or
    without the head. Set `drop_path_prob` before each epoch.
    """

    def __init__(self, genotype: Genotype, channels: int = 36, cells: int = 20, num_classes: int = 10, auxiliary: bool = True, stem_multiplier: int = 3):
        super().__init__()
        self.genotype = genotype
        self.drop_path_prob = 0.0
        c_stem = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(3, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))

        c_prev_prev, c_prev, c = c_stem, c_stem, channels
        reductions = reduction_positions(cells)
        self.auxiliary_position = reductions[1]
        reduction_prev = False
        layers = []
        c_auxiliary = None
        for index in range(cells):
            reduction = index in reductions
            if reduction:
                c *= 2
            pairs, concat = (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal, genotype.normal_concat)
            layers.append(EvalCell(pairs, concat, c_prev_prev, c_prev, c, reduction, reduction_prev))
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, len(concat) * c
            if index == self.auxiliary_position:
                c_auxiliary = c_prev
        self.cells = nn.ModuleList(layers)
        self.auxiliary_head = AuxiliaryHead(c_auxiliary, num_classes) if auxiliary else None
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        auxiliary_logits = None
        s0 = s1 = self.stem(x)
        for index, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if index == self.auxiliary_position and self.auxiliary_head is not None and self.training:
                auxiliary_logits = self.auxiliary_head(s1)
        return self.classifier(s1.mean(dim=(2, 3))), auxiliary_logits

    def num_parameters(self, include_auxiliary: bool = False) -> int:
        """Count the weights; the auxiliary head is excluded by default, as DARTS reports."""
        return sum(
            p.numel()
            for name, p in self.named_parameters()
            if include_auxiliary or not name.startswith("auxiliary_head.")
        )


# -- memory (Table 3) ----------------------------------------------------------------------


def _saved_tensor_bytes(model: nn.Module, images: torch.Tensor) -> int:
    """Return the bytes of the distinct tensors autograd saves for the backward pass of one step."""
    seen: dict[tuple, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[(storage.data_ptr(), tensor.device)] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(images).logsumexp(dim=1).mean()
    loss.backward()
    return sum(seen.values())


def measure_search_memory(method: str, cells: int, batch_size: int = 64, channels: int = 16, image_size: int = 32, device: str | torch.device = "cpu") -> dict:
    """Measure the memory of one forward and backward pass of a search supernet.

    Returns a dict with `parameters` (weights without alphas), `saved_bytes` (the tensors
    autograd keeps for the backward pass, counted once per storage, so the same on every
    device) and, on CUDA, `cuda_peak_bytes` from torch.cuda.max_memory_allocated. On CPU it
    adds `max_rss_bytes`, the process's peak resident size so far, which also contains
    everything allocated before the call.
    """
    device = torch.device(device)
    model = DartsSupernet(method, channels=channels, cells=cells).to(device)
    images = torch.randn(batch_size, 3, image_size, image_size, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    saved = _saved_tensor_bytes(model, images)
    result = {
        "method": method,
        "cells": cells,
        "batch_size": batch_size,
        "parameters": model.num_weight_parameters(),
        "saved_bytes": saved,
    }
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    else:
        scale = 1 if os.uname().sysname == "Darwin" else 1024  # ru_maxrss is KiB on Linux
        result["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return result
