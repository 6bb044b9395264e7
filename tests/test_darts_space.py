"""Tests of the DARTS space: genotypes, derivation, merged edges, odd sizes, networks, search CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mergenas.cli import main
from mergenas.ops import op_masks
from mergenas.spaces.darts import (
    DARTS_V2,
    EDGES,
    GENOTYPES,
    MERGENAS_PAPER,
    OPS,
    SEPARABLE_OPS,
    Genotype,
    GenotypeError,
    derive_cell,
    load_genotype,
    save_genotype,
)
from mergenas.spaces.darts_net import (
    DartsNetwork,
    DartsSupernet,
    MergedEdge,
    describe_architecture,
    measure_search_memory,
)

DATA_ROOT = str(os.environ.get("MERGENAS_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(
    not (Path(DATA_ROOT) / "cifar10" / "cifar10.npz").exists(), reason=f"CIFAR-10 not found under {DATA_ROOT}"
)


# -- genotypes -----------------------------------------------------------------------------


def test_genotype_json_round_trip(tmp_path):
    path = tmp_path / "genotype.json"
    save_genotype(MERGENAS_PAPER, path)
    assert load_genotype(path) == MERGENAS_PAPER
    assert json.loads(path.read_text())["space"] == "darts"


def test_genotype_read_from_search_result(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"genotype": DARTS_V2.to_dict(), "method": "mergenas"}))
    assert load_genotype(path) == DARTS_V2


def test_named_genotypes_load():
    for name, genotype in GENOTYPES.items():
        assert load_genotype(name) is genotype


def test_paper_cells_match_description():
    normal_ops = [op for op, _ in MERGENAS_PAPER.normal]
    reduce_ops = {op for op, _ in MERGENAS_PAPER.reduce}
    assert normal_ops.count("sep_conv_5x5") == 1
    assert normal_ops.count("sep_conv_3x3") == 7
    assert reduce_ops == {"max_pool_3x3", "skip_connect"}


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"cell": "|nor_conv_3x3~0|", "space": "nb201"}), "search space 'nb201'"),
        (json.dumps({"normal": []}), "missing reduce"),
        (json.dumps({**DARTS_V2.to_dict(), "normal": [["sep_conv_3x3", 0]] * 7}), "must have 8"),
        (json.dumps({**DARTS_V2.to_dict(), "normal": [["conv_7x7", 0]] * 8}), "unknown op 'conv_7x7'"),
        (json.dumps({**DARTS_V2.to_dict(), "reduce": [["skip_connect", 2]] * 8}), "from input 2"),
        (json.dumps([1, 2]), "must be a JSON object"),
    ],
)
def test_bad_genotype_file_rejected(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(GenotypeError, match=message):
        load_genotype(path)


def test_unknown_genotype_name_rejected():
    with pytest.raises(GenotypeError, match="neither a known name"):
        load_genotype("NOT_A_GENOTYPE")


# -- derivation ----------------------------------------------------------------------------


def test_derive_ranks_by_softmax_not_raw_alphas():
    alphas = torch.zeros(len(EDGES), len(OPS))
    # Node 0 has edges from inputs 0 and 1 only, so it keeps both. Node 1 (rows 2..4) reads
    # inputs 0, 1, 2 and must drop one.
    flat = torch.full((len(OPS),), 5.0)
    flat[OPS.index("none")] = 0.0  # raw max 5.0, but softmax ~ 1/7 on every op
    alphas[2] = flat
    alphas[3, OPS.index("sep_conv_5x5")] = 3.0  # raw max 3.0, softmax 0.74
    alphas[4, OPS.index("dil_conv_3x3")] = 2.0  # raw max 2.0, softmax 0.51
    by_raw = sorted(range(3), key=lambda i: -alphas[2 + i, 1:].max().item())[:2]
    assert sorted(by_raw) == [0, 1], "the raw ranking must differ for the test to mean anything"

    pairs = derive_cell(alphas)
    assert pairs[2:4] == (("sep_conv_5x5", 1), ("dil_conv_3x3", 2))


def test_derive_picks_two_different_inputs():
    torch.manual_seed(0)
    pairs = derive_cell(torch.randn(len(EDGES), len(OPS)))
    for node in range(4):
        (op_a, input_a), (op_b, input_b) = pairs[2 * node], pairs[2 * node + 1]
        assert input_a != input_b
        assert "none" not in (op_a, op_b)
        assert max(input_a, input_b) < node + 2


# -- merged edge ---------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [1, 2])
def test_merged_edge_equals_weighted_separable_sum(stride):
    torch.manual_seed(0)
    channels = 4
    edge = MergedEdge(channels, stride).double()
    x = torch.randn(2, channels, 11, 11, dtype=torch.float64)
    weights = F.softmax(torch.randn(len(OPS), dtype=torch.float64), dim=0)
    merged = edge.merged_separable(x, weights)

    masks = op_masks(SEPARABLE_OPS, 9, dtype=torch.float64)
    expected = 0
    for name in SEPARABLE_OPS:
        masked = masks[name] * edge.depthwise  # (C, 1, 9, 9), this op's view of the shared kernel
        k, rate = int(name[-1]), 2 if name.startswith("dil") else 1
        field = rate * (k - 1) + 1
        start = (9 - field) // 2
        native = masked[:, :, start:start + field:rate, start:start + field:rate]  # (C, 1, k, k)
        out = F.conv2d(F.relu(x), native, stride=stride, padding=field // 2, dilation=rate, groups=channels)
        expected = expected + weights[OPS.index(name)] * F.conv2d(out, edge.pointwise)

    assert merged.shape == expected.shape
    error = (merged - expected).abs().max() / expected.abs().max()
    assert error.item() < 1e-12


def test_parameter_counts_of_both_modes():
    counts = {mode: DartsSupernet(mode, channels=16, cells=8).num_weight_parameters() for mode in ("darts", "mergenas")}
    print(f"supernet weights at 8 cells, C=16: {counts}")
    assert counts["mergenas"] < counts["darts"]
    assert counts == {"darts": 1_333_882, "mergenas": 725_498}


# -- shapes --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["darts", "mergenas"])
@pytest.mark.parametrize("size", [9, 11])
def test_supernet_odd_input_sizes(mode, size):
    torch.manual_seed(0)
    model = DartsSupernet(mode, channels=4, cells=3)
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert model.alphas_normal.grad is not None and model.alphas_reduce.grad is not None


def test_supernet_interface():
    model = DartsSupernet("mergenas", channels=4, cells=3)
    weights = model.edge_weights()
    assert weights.shape == (2, len(EDGES), len(OPS))
    assert len(weights.detach().cpu().tolist()) == 2
    assert len(model.arch_parameters()) == 2
    names = {id(p) for p in model.weight_parameters()}
    assert not any(id(p) in names for p in model.arch_parameters())
    description = describe_architecture(model, None)
    assert Genotype.from_dict(description["genotype"]) == model.derive()
    assert isinstance(description["cell"], str)


@pytest.mark.parametrize("size", [9, 32])
def test_evaluation_network_shapes(size):
    model = DartsNetwork(MERGENAS_PAPER, channels=4, cells=5)
    model.drop_path_prob = 0.2
    logits, auxiliary = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 10)
    assert auxiliary.shape == (2, 10)
    model.eval()
    logits, auxiliary = model(torch.randn(2, 3, size, size))
    assert auxiliary is None


def test_evaluation_network_parameters():
    counts = {name: DartsNetwork(genotype).num_parameters() / 1e6 for name, genotype in GENOTYPES.items()}
    print(f"20 cells, C=36, without the auxiliary head: {counts} M")
    # MergeNAS (Wang et al., IJCAI 2020, Table 1) reports 2.9 M for its cells.
    assert 2.6 < counts["MERGENAS_PAPER"] < 3.1
    assert 2.2 < counts["DARTS_V2"] < 2.7


def test_reduction_positions_of_evaluation_network():
    model = DartsNetwork(DARTS_V2, channels=4, cells=20)
    assert [i for i, cell in enumerate(model.cells) if cell.reduction] == [6, 13]
    assert model.auxiliary_position == 13


def test_search_memory_lower_for_mergenas():
    darts = measure_search_memory("darts", cells=3, batch_size=2, channels=4, image_size=16)
    merged = measure_search_memory("mergenas", cells=3, batch_size=2, channels=4, image_size=16)
    print(f"saved bytes: darts {darts['saved_bytes']}, mergenas {merged['saved_bytes']}")
    assert merged["saved_bytes"] < darts["saved_bytes"]


# -- search through the command line -------------------------------------------------------


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize("order", ["1", "2"])
def test_cli_search_darts_space(tmp_path, order, capsys):
    out = tmp_path / f"order{order}"
    status = main([
        "search", "--space", "darts", "--order", order, "--preset", "ci", "--device", "cpu",
        "--quiet", "--data-root", DATA_ROOT, "--out", str(out),
    ])
    assert status == 0
    result = json.loads((out / "result.json").read_text())
    genotype = Genotype.from_dict(result["genotype"])
    assert len(genotype.normal) == 8
    assert len(genotype.reduce) == 8
    assert torch.tensor(result["alphas"]).shape == (2, len(EDGES), len(OPS))
    assert "genotype:" in capsys.readouterr().out
