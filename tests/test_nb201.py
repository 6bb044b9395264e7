"""The NAS-Bench-201 cell strings and the three network modes."""

import pytest
import torch
import torch.nn.functional as F

from mergenas.spaces.nb201 import EDGES, OPS, Cell, CellError, cell_from_alphas, parse_cell
from mergenas.spaces.nb201_net import (
    DartsEdge,
    MergedEdge,
    MergeOptions,
    NB201Network,
)

INDEX_1 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
ALL_CONV = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# -- cell strings -------------------------------------------------------------------------------


def test_cell_string_round_trip():
    cell = Cell.from_string(INDEX_1)
    assert cell.ops == ("nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect", "nor_conv_3x3", "skip_connect")
    assert cell.to_string() == INDEX_1
    assert parse_cell(list(cell.ops)) == cell
    assert cell.edge_op(3, 2) == "skip_connect"


@pytest.mark.parametrize(
    "text, names",
    [
        ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|", "expected 3"),
        ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|", "expected 3"),
        ("|conv_7x7~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|", "'conv_7x7'"),
        ("|nor_conv_3x3~|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|", "'nor_conv_3x3~'"),
        ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~2|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|", "'avg_pool_3x3~2'"),
        ("nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|", "must start and end with '|'"),
        (" " + INDEX_1, "whitespace"),
        ("|none~0|+|none~0\n|none~1|+|none~0|none~1|none~2|", "whitespace"),
    ],
)
def test_malformed_cell_string_named(text, names):
    with pytest.raises(CellError) as error:
        Cell.from_string(text)
    assert names in str(error.value)


def test_cell_wrong_edge_count():
    with pytest.raises(CellError, match="6 edges, got 5"):
        Cell(("none",) * 5)


def test_cell_from_alphas_argmax():
    alphas = torch.zeros(len(EDGES), len(OPS))
    for edge, op in enumerate(Cell.from_string(INDEX_1).ops):
        alphas[edge, OPS.index(op)] = 1.0
    assert cell_from_alphas(alphas).to_string() == INDEX_1
    assert cell_from_alphas(F.softmax(alphas, dim=-1)).to_string() == INDEX_1
    with pytest.raises(CellError, match=r"shape \(6, 5\)"):
        cell_from_alphas(torch.zeros(6, 4))


# -- the merged edge ----------------------------------------------------------------------------


def _separate_convolutions(edge: MergedEdge, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_o w_o conv(ReLU(x), M_o * W) over the candidates, each as its own convolution."""
    relu_x = F.relu(x)
    w = edge.weight
    conv_3x3 = F.conv2d(relu_x, w, padding=1)
    conv_1x1 = F.conv2d(relu_x, w[:, :, 1:2, 1:2], padding=0)  # the 1x1 tap is the centre of W
    skip = relu_x
    pool = F.avg_pool2d(relu_x, 3, stride=1, padding=1, count_include_pad=True)
    outputs = {"none": 0, "skip_connect": skip, "nor_conv_1x1": conv_1x1, "nor_conv_3x3": conv_3x3, "avg_pool_3x3": pool}
    return sum(weights[OPS.index(name)] * out for name, out in outputs.items())


@pytest.mark.parametrize("channels, size", [(4, 8), (8, 7), (16, 11)])
def test_merged_conv_equals_weighted_sum(channels, size):
    torch.manual_seed(0)
    edge = MergedEdge(channels).double()
    x = torch.randn(3, channels, size, size, dtype=torch.float64)
    weights = F.softmax(torch.randn(len(OPS), dtype=torch.float64), dim=0)
    merged = edge.merged_conv(x, weights)
    assert rel_err(merged, _separate_convolutions(edge, x, weights)) < 1e-10


def test_merged_edge_alpha_gradient_matches():
    torch.manual_seed(1)
    edge = MergedEdge(6).double()
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    alphas = torch.randn(len(OPS), dtype=torch.float64, requires_grad=True)
    (grad_merged,) = torch.autograd.grad(edge.merged_conv(x, F.softmax(alphas, 0)).square().sum(), alphas)
    (grad_separate,) = torch.autograd.grad(_separate_convolutions(edge, x, F.softmax(alphas, 0)).square().sum(), alphas)
    assert rel_err(grad_merged, grad_separate) < 1e-10


def test_merged_pooling_differs_only_at_border():
    """A merged avg-pool counts padded zeros; the benchmark's pooling does not."""
    torch.manual_seed(2)
    channels = 4
    weights = torch.zeros(len(OPS), dtype=torch.float64)
    weights[OPS.index("avg_pool_3x3")] = 1.0
    x = torch.rand(2, channels, 8, 8, dtype=torch.float64)  # non-negative, so ReLU is the identity
    merged = MergedEdge(channels).double().merged_conv(x, weights)
    benchmark = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert (merged[interior] - benchmark[interior]).abs().max().item() < 1e-12
    border_gap = (merged - benchmark).abs().max().item()
    assert border_gap > 0.05  # a corner covers 4 of 9 taps, so merged = 4/9 of the benchmark's value


def test_one_batchnorm_differs_from_one_per_candidate():
    """Normalising the merged sum is not the alpha-weighted sum of per-candidate normalisations."""
    torch.manual_seed(3)
    channels = 8
    merged = MergedEdge(channels, MergeOptions(merge_parameter_free=False)).double()
    darts = DartsEdge(channels).double()
    with torch.no_grad():
        darts.candidates["nor_conv_3x3"][1].weight.copy_(merged.weight)
        darts.candidates["nor_conv_1x1"][1].weight.copy_(merged.weight[:, :, 1:2, 1:2])
    weights = torch.tensor([0.0, 0.0, 0.5, 0.5, 0.0], dtype=torch.float64)
    x = torch.randn(4, channels, 8, 8, dtype=torch.float64)
    gap = (merged(x, weights) - darts(x, weights)).abs().max().item()
    assert gap > 1e-2

    one_op = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    assert (merged(x, one_op) - darts(x, one_op)).abs().max().item() < 1e-10


def test_separate_parameter_free_matches_darts():
    """With skip and pooling kept apart, those two ops behave exactly as the DARTS edge's."""
    torch.manual_seed(4)
    channels = 4
    merged = MergedEdge(channels, MergeOptions(merge_parameter_free=False)).double()
    darts = DartsEdge(channels).double()
    weights = torch.tensor([0.1, 0.6, 0.0, 0.0, 0.3], dtype=torch.float64)
    x = torch.randn(2, channels, 7, 7, dtype=torch.float64)
    # The convolution weights are zero-weighted, but BN(conv) still contributes 0 * ... = 0.
    assert rel_err(merged(x, weights), darts(x, weights)) < 1e-10


# -- whole networks ---------------------------------------------------------------------------


def test_parameter_counts():
    darts = NB201Network("darts")
    merged = NB201Network("mergenas")
    discrete = NB201Network("discrete", cell=ALL_CONV)
    # One 3x3 and one 1x1 kernel per DARTS edge; one shared 3x3 kernel per MergeNAS edge.
    edges_per_stage = 5 * len(EDGES)
    extra_1x1 = sum(edges_per_stage * c * c for c in (16, 32, 64))
    assert darts.num_weight_parameters() - merged.num_weight_parameters() == extra_1x1
    # The discrete network has the same kernels as MergeNAS plus affine BN parameters.
    assert discrete.num_weight_parameters() > merged.num_weight_parameters()
    assert merged.num_weight_parameters() == 1_524_282
    assert darts.num_weight_parameters() == 1_685_562


@pytest.mark.parametrize("mode", ["darts", "mergenas"])
def test_supernet_forward_backward(mode):
    torch.manual_seed(0)
    net = NB201Network(mode, cells_per_stage=1)
    logits = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert net.alphas.grad is not None and net.alphas.grad.abs().sum() > 0
    assert isinstance(net.derive(), Cell)


def test_discrete_network_runs_cell():
    net = NB201Network("discrete", cell=INDEX_1, cells_per_stage=1)
    assert net.derive().to_string() == INDEX_1
    assert net.arch_parameters() == []
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_network_mode_errors():
    with pytest.raises(ValueError, match="unknown network mode 'merge'"):
        NB201Network("merge")
    with pytest.raises(ValueError, match="needs a cell"):
        NB201Network("discrete")
