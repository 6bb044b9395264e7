"""Numerical checks of mergenas.ops against PyTorch's own convolution and pooling.

Every comparison runs in float64 on random inputs and requires a relative error below 1e-10,
where rel_err(a, b) = max|a - b| / max|b|.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mergenas.ops import (
    avg_pool_kernel,
    dilate_kernel,
    identity_kernel,
    merged_kernel,
    op_masks,
    pad_kernel,
    receptive_field,
    saliency_mask,
    separable_to_dense,
)

DTYPE = torch.float64
TOLERANCE = 1e-10

# (C_in, C_out) pairs: single channel, widening and narrowing.
CHANNELS = [(1, 1), (3, 8), (8, 3)]
STRIDES = [1, 2]
INPUT_SIZES = [7, 8, 11, 16]

NAS_BENCH_201_CONVS = ["nor_conv_1x1", "nor_conv_3x3"]
DARTS_CONVS = ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().item()
    assert scale > 0, "reference output is all zeros, so the comparison would prove nothing"
    return (actual - expected).abs().max().item() / scale


def make_generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash(key) % (2**31))


def randn(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=DTYPE)


# Proposition 1: zero padding.


@pytest.mark.parametrize("in_channels, out_channels", CHANNELS)
@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("input_size", INPUT_SIZES)
@pytest.mark.parametrize("k", [1, 3, 5])
def test_pad_kernel_matches_small_conv(in_channels, out_channels, stride, input_size, k):
    generator = make_generator(in_channels, out_channels, stride, input_size, k)
    x = randn(generator, 2, in_channels, input_size, input_size)
    weight = randn(generator, out_channels, in_channels, k, k)
    expected = F.conv2d(x, weight, stride=stride, padding=k // 2)

    for size in (k, k + 2, k + 6):
        padded = pad_kernel(weight, size)
        assert padded.shape == (out_channels, in_channels, size, size)
        actual = F.conv2d(x, padded, stride=stride, padding=size // 2)
        assert rel_err(actual, expected) < TOLERANCE, f"size {size}"


def test_pad_kernel_places_weight_at_centre():
    weight = torch.arange(9, dtype=DTYPE).reshape(1, 1, 3, 3) + 1
    padded = pad_kernel(weight, 7)
    assert torch.equal(padded[:, :, 2:5, 2:5], weight)
    assert padded.sum() == weight.sum()


def test_pad_kernel_keeps_dtype_device_and_grad():
    weight = torch.randn(2, 3, 3, 3, dtype=torch.float32, requires_grad=True)
    padded = pad_kernel(weight, 5)
    assert padded.dtype == torch.float32
    padded.sum().backward()
    assert torch.equal(weight.grad, torch.ones_like(weight))

    meta = pad_kernel(torch.empty(2, 3, 3, 3, device="meta", dtype=torch.float16), 9)
    assert meta.device.type == "meta"
    assert meta.dtype == torch.float16


@pytest.mark.parametrize(
    "weight_shape, size, message",
    [
        ((1, 1, 3, 3), 4, "odd"),
        ((1, 1, 3, 3), 0, "odd"),
        ((1, 1, 5, 5), 3, "at least the kernel size 5"),
        ((1, 1, 2, 2), 5, "odd kernel size"),
        ((1, 3, 3), 5, "4-D"),
        ((1, 1, 3, 5), 5, "3 x 5"),
    ],
)
def test_pad_kernel_rejects_bad_arguments(weight_shape, size, message):
    with pytest.raises(ValueError, match=message):
        pad_kernel(torch.zeros(weight_shape), size)


# Proposition 2: dilation.


@pytest.mark.parametrize("in_channels, out_channels", CHANNELS)
@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("input_size", INPUT_SIZES)
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("rate", [2, 3])
def test_dilate_kernel_matches_dilated_conv(in_channels, out_channels, stride, input_size, k, rate):
    generator = make_generator(in_channels, out_channels, stride, input_size, k, rate)
    x = randn(generator, 2, in_channels, input_size, input_size)
    weight = randn(generator, out_channels, in_channels, k, k)
    padding = rate * (k - 1) // 2
    expected = F.conv2d(x, weight, stride=stride, padding=padding, dilation=rate)

    dense = dilate_kernel(weight, rate)
    size = rate * (k - 1) + 1
    assert dense.shape == (out_channels, in_channels, size, size)
    actual = F.conv2d(x, dense, stride=stride, padding=size // 2)
    assert rel_err(actual, expected) < TOLERANCE

    # Propositions 1 and 2 together: the dilated kernel inside a larger shared kernel.
    larger = pad_kernel(dense, size + 4)
    actual_larger = F.conv2d(x, larger, stride=stride, padding=(size + 4) // 2)
    assert rel_err(actual_larger, expected) < TOLERANCE


def test_dilate_kernel_puts_zeros_between_taps():
    weight = torch.arange(1, 10, dtype=DTYPE).reshape(1, 1, 3, 3)
    dense = dilate_kernel(weight, 3)[0, 0]
    assert dense.shape == (7, 7)
    assert torch.equal(dense[::3, ::3], weight[0, 0])
    assert torch.count_nonzero(dense) == 9


def test_dilate_kernel_rate_one_is_identity():
    weight = torch.randn(4, 2, 3, 3, dtype=DTYPE)
    assert torch.equal(dilate_kernel(weight, 1), weight)


@pytest.mark.parametrize("rate", [0, -1, 1.5, True])
def test_dilate_kernel_rejects_bad_rate(rate):
    with pytest.raises(ValueError, match="rate must be a positive int"):
        dilate_kernel(torch.zeros(1, 1, 3, 3), rate)


# Proposition 3: separable convolution.


@pytest.mark.parametrize("in_channels, out_channels", CHANNELS)
@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("input_size", INPUT_SIZES)
@pytest.mark.parametrize("k", [1, 3, 5])
def test_separable_to_dense_matches_two_convs(in_channels, out_channels, stride, input_size, k):
    generator = make_generator(in_channels, out_channels, stride, input_size, k, 3)
    x = randn(generator, 2, in_channels, input_size, input_size)
    w_depthwise = randn(generator, in_channels, 1, k, k)
    w_pointwise = randn(generator, out_channels, in_channels, 1, 1)
    depthwise = F.conv2d(x, w_depthwise, stride=stride, padding=k // 2, groups=in_channels)
    expected = F.conv2d(depthwise, w_pointwise)

    dense = separable_to_dense(w_depthwise, w_pointwise)
    assert dense.shape == (out_channels, in_channels, k, k)
    actual = F.conv2d(x, dense, stride=stride, padding=k // 2)
    assert rel_err(actual, expected) < TOLERANCE

    padded = pad_kernel(dense, k + 4)
    actual_padded = F.conv2d(x, padded, stride=stride, padding=(k + 4) // 2)
    assert rel_err(actual_padded, expected) < TOLERANCE


def test_separable_to_dense_formula():
    w_depthwise = torch.randn(3, 1, 3, 3, dtype=DTYPE)
    w_pointwise = torch.randn(5, 3, 1, 1, dtype=DTYPE)
    dense = separable_to_dense(w_depthwise, w_pointwise)
    for c in range(5):
        for m in range(3):
            assert torch.equal(dense[c, m], w_depthwise[m, 0] * w_pointwise[c, m, 0, 0])


@pytest.mark.parametrize(
    "depthwise_shape, pointwise_shape, message",
    [
        ((3, 2, 3, 3), (4, 3, 1, 1), r"\(C_in, 1, k, k\)"),
        ((3, 1, 3, 3), (4, 2, 1, 1), r"\(C_out, 3, 1, 1\)"),
        ((3, 1, 3, 3), (4, 3, 3, 3), r"\(C_out, 3, 1, 1\)"),
        ((3, 1, 3, 3), (4, 3), "4-D"),
        ((3, 3, 3), (4, 3, 1, 1), "4-D"),
    ],
)
def test_separable_to_dense_rejects_bad_shapes(depthwise_shape, pointwise_shape, message):
    with pytest.raises(ValueError, match=message):
        separable_to_dense(torch.zeros(depthwise_shape), torch.zeros(pointwise_shape))


def test_separable_to_dense_rejects_mixed_dtypes():
    with pytest.raises(ValueError, match="same dtype"):
        separable_to_dense(
            torch.zeros(3, 1, 3, 3, dtype=torch.float32), torch.zeros(4, 3, 1, 1, dtype=DTYPE)
        )


# Parameter-free operations as convolutions.


@pytest.mark.parametrize("channels", [1, 3, 8])
@pytest.mark.parametrize("input_size", INPUT_SIZES)
@pytest.mark.parametrize("size", [1, 3, 5, 9])
def test_identity_kernel_conv_returns_input(channels, input_size, size):
    x = randn(make_generator(channels, input_size, size), 2, channels, input_size, input_size)
    kernel = identity_kernel(channels, size, dtype=DTYPE)
    assert kernel.shape == (channels, channels, size, size)

    stride_one = F.conv2d(x, kernel, stride=1, padding=size // 2)
    assert rel_err(stride_one, x) < TOLERANCE
    stride_two = F.conv2d(x, kernel, stride=2, padding=size // 2)
    assert rel_err(stride_two, x[:, :, ::2, ::2]) < TOLERANCE


def test_identity_kernel_dtype_and_device():
    assert identity_kernel(2, 3).dtype == torch.get_default_dtype()
    assert identity_kernel(2, 3, dtype=torch.float16).dtype == torch.float16
    assert identity_kernel(2, 3, device="meta").device.type == "meta"


@pytest.mark.parametrize("channels, size", [(0, 3), (2, 4), (2, -1), (2.0, 3)])
def test_identity_kernel_rejects_bad_arguments(channels, size):
    with pytest.raises(ValueError):
        identity_kernel(channels, size)


@pytest.mark.parametrize("channels", [1, 3, 8])
@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("input_size", INPUT_SIZES)
@pytest.mark.parametrize("size", [3, 5, 9])
def test_avg_pool_kernel_matches_count_include_pad(channels, stride, input_size, size):
    generator = make_generator(channels, stride, input_size, size)
    x = randn(generator, 2, channels, input_size, input_size)
    kernel = avg_pool_kernel(channels, 3, size, dtype=DTYPE)
    assert kernel.shape == (channels, channels, size, size)

    expected = F.avg_pool2d(x, 3, stride, padding=1, count_include_pad=True)
    actual = F.conv2d(x, kernel, stride=stride, padding=size // 2)
    assert rel_err(actual, expected) < TOLERANCE


def test_avg_pool_kernel_5x5_matches_pooling():
    x = randn(make_generator(5, 5), 2, 3, 11, 11)
    expected = F.avg_pool2d(x, 5, 1, padding=2, count_include_pad=True)
    actual = F.conv2d(x, avg_pool_kernel(3, 5, 7, dtype=DTYPE), padding=3)
    assert rel_err(actual, expected) < TOLERANCE


@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("input_size", [7, 8])
def test_avg_pool_kernel_border_gap(stride, input_size):
    """Measure the gap to count_include_pad=False, the NAS-Bench-201 avg_pool_3x3."""
    x = randn(make_generator(stride, input_size, 201), 2, 4, input_size, input_size)
    merged = F.conv2d(x, avg_pool_kernel(4, 3, 3, dtype=DTYPE), stride=stride, padding=1)
    benchmark = F.avg_pool2d(x, 3, stride, padding=1, count_include_pad=False)
    difference = (merged - benchmark).abs()

    # Fraction of each pooling window that lies inside the image: 1 inside, < 1 on the border.
    inside = F.avg_pool2d(torch.ones_like(x), 3, stride, padding=1, count_include_pad=True)
    border = inside < 1 - 1e-12
    assert border.any()
    assert (~border).any()

    assert difference[~border].max() < 1e-12
    assert difference[border].max() > 1e-3
    # The exact relation: the fixed kernel scales the benchmark's mean by in-image taps / 9.
    assert rel_err(merged, benchmark * inside) < TOLERANCE


@pytest.mark.parametrize(
    "k, size, message",
    [
        (2, 3, "k must be a positive odd int"),
        (3, 1, "at least the pooling size k=3"),
        (3, 4, "odd"),
    ],
)
def test_avg_pool_kernel_rejects_bad_sizes(k, size, message):
    with pytest.raises(ValueError, match=message):
        avg_pool_kernel(2, k, size)


# Receptive-field masks.


def test_op_masks_darts_patterns_in_9x9():
    masks = op_masks(DARTS_CONVS, 9, dtype=DTYPE)
    assert list(masks) == DARTS_CONVS
    for name, mask in masks.items():
        assert mask.shape == (9, 9), name
        assert mask.dtype == DTYPE, name
        assert set(mask.unique().tolist()) <= {0.0, 1.0}, name
        assert mask[4, 4] == 1, name

    assert masks["sep_conv_3x3"].sum() == 9
    assert masks["sep_conv_5x5"].sum() == 25
    assert masks["dil_conv_3x3"].sum() == 9
    assert masks["dil_conv_5x5"].sum() == 25

    assert masks["sep_conv_3x3"][3:6, 3:6].sum() == 9
    assert masks["sep_conv_5x5"][2:7, 2:7].sum() == 25
    assert masks["dil_conv_3x3"][2:7:2, 2:7:2].sum() == 9
    assert masks["dil_conv_5x5"][0:9:2, 0:9:2].sum() == 25

    ring = torch.ones(9, 9, dtype=torch.bool)
    ring[1:8, 1:8] = False
    for name in ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3"]:
        assert masks[name][ring].sum() == 0, name
    assert masks["dil_conv_5x5"][ring].sum() == 16


def test_op_masks_nas_bench_201_in_3x3():
    masks = op_masks(["nor_conv_3x3", "nor_conv_1x1"], 3)
    assert list(masks) == ["nor_conv_3x3", "nor_conv_1x1"]
    assert torch.equal(masks["nor_conv_3x3"], torch.ones(3, 3))
    expected_1x1 = torch.zeros(3, 3)
    expected_1x1[1, 1] = 1
    assert torch.equal(masks["nor_conv_1x1"], expected_1x1)


def test_op_masks_generic_and_5x5_names():
    masks = op_masks(["conv_7x7", "nor_conv_5x5"], 7)
    assert masks["conv_7x7"].sum() == 49
    assert masks["nor_conv_5x5"].sum() == 25
    assert masks["nor_conv_5x5"][0].sum() == 0


@pytest.mark.parametrize(
    "op, expected",
    [
        ("nor_conv_1x1", 1),
        ("nor_conv_3x3", 3),
        ("sep_conv_5x5", 5),
        ("dil_conv_3x3", 5),
        ("dil_conv_5x5", 9),
        ("conv_7x7", 7),
        ("skip_connect", 1),
        ("avg_pool_3x3", 3),
        ("max_pool_3x3", 3),
        ("none", 0),
    ],
)
def test_receptive_field_sizes(op, expected):
    assert receptive_field(op) == expected


def test_receptive_field_rejects_unknown_op():
    with pytest.raises(ValueError, match="unknown op 'conv_3x3x3'"):
        receptive_field("conv_3x3x3")


def test_op_masks_rejects_unknown_op():
    with pytest.raises(ValueError, match="unknown op 'sep_conv_3'") as error:
        op_masks(["sep_conv_3x3", "sep_conv_3"], 9)
    assert "dil_conv_5x5" in str(error.value)
    assert "conv_KxK" in str(error.value)


def test_op_masks_rejects_small_size():
    with pytest.raises(ValueError, match="'dil_conv_5x5'.*at least 9, got 7"):
        op_masks(DARTS_CONVS, 7)
    with pytest.raises(ValueError, match="'dil_conv_3x3'.*at least 5, got 3"):
        op_masks(["dil_conv_3x3"], 3)


@pytest.mark.parametrize(
    "op, helper",
    [
        ("skip_connect", "identity_kernel"),
        ("avg_pool_3x3", "avg_pool_kernel"),
        ("max_pool_3x3", "separately"),
        ("none", "outputs zeros"),
    ],
)
def test_op_masks_rejects_parameter_free_op(op, helper):
    with pytest.raises(ValueError, match=f"op '{op}' is parameter-free") as error:
        op_masks(["nor_conv_3x3", op], 3)
    assert helper in str(error.value)


def test_op_masks_rejects_even_kernel_name():
    with pytest.raises(ValueError, match="'nor_conv_4x4'.*odd"):
        op_masks(["nor_conv_4x4"], 5)


def test_op_masks_rejects_string_and_duplicates():
    with pytest.raises(ValueError, match="single string"):
        op_masks("nor_conv_3x3", 3)
    with pytest.raises(ValueError, match="'nor_conv_3x3' appears twice"):
        op_masks(["nor_conv_3x3", "nor_conv_3x3"], 3)
    with pytest.raises(ValueError, match="odd"):
        op_masks(["nor_conv_3x3"], 4)


# Saliency mask and merged kernel.


def test_saliency_mask_regions_sum_alphas():
    masks = op_masks(DARTS_CONVS, 9, dtype=DTYPE)
    alphas = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=DTYPE)
    saliency = saliency_mask(alphas, masks)
    assert saliency.shape == (9, 9)

    assert saliency[4, 4].item() == pytest.approx(1.0, abs=1e-15)
    # Outer ring of 9x9: only dil_conv_5x5 at even taps, nothing at odd taps.
    assert saliency[0, 0].item() == pytest.approx(0.4, abs=1e-15)
    assert saliency[0, 1].item() == 0
    # Centre 3x3 minus the centre: sep 3x3 and 5x5 only.
    assert saliency[3, 4].item() == pytest.approx(0.3, abs=1e-15)
    # (2, 2): sep 5x5, dil 3x3 and dil 5x5.
    assert saliency[2, 2].item() == pytest.approx(0.9, abs=1e-15)
    # (2, 3): sep 5x5 only.
    assert saliency[2, 3].item() == pytest.approx(0.2, abs=1e-15)


def test_saliency_mask_dict_alphas_match_tensor():
    masks = op_masks(DARTS_CONVS, 9, dtype=DTYPE)
    values = [0.5, -0.25, 1.5, 2.0]
    from_tensor = saliency_mask(torch.tensor(values, dtype=DTYPE), masks)

    shuffled = dict(zip(reversed(DARTS_CONVS), reversed(values)))
    from_dict = saliency_mask(shuffled, masks)
    assert torch.equal(from_dict, from_tensor)

    from_sequence = saliency_mask(torch.tensor(values, dtype=DTYPE), list(masks.values()))
    assert torch.equal(from_sequence, from_tensor)


def test_saliency_mask_gradient_reaches_alphas():
    masks = op_masks(DARTS_CONVS, 9, dtype=DTYPE)
    alphas = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=DTYPE, requires_grad=True)
    probe = randn(make_generator(7), 9, 9)

    (saliency_mask(alphas, masks) * probe).sum().backward()

    # d/d alpha_o of sum(M~ * G) is sum(M_o * G).
    expected = torch.stack([(mask * probe).sum() for mask in masks.values()])
    assert rel_err(alphas.grad, expected) < TOLERANCE


def test_merged_kernel_gradient_matches_per_op_convs():
    generator = make_generator(11)
    masks = op_masks(DARTS_CONVS, 9, dtype=DTYPE)
    x = randn(generator, 2, 3, 11, 11)
    weight = randn(generator, 4, 3, 9, 9)
    probe = randn(generator, 2, 4, 11, 11)
    alphas = torch.softmax(randn(generator, 4), dim=0).requires_grad_(True)

    output = F.conv2d(x, merged_kernel(weight, alphas, masks), padding=4)
    (output * probe).sum().backward()

    # The edge output is linear in alpha, so d/d alpha_o is sum(conv(x, M_o * W) * G).
    expected = torch.stack(
        [(F.conv2d(x, mask * weight, padding=4) * probe).sum() for mask in masks.values()]
    )
    assert rel_err(alphas.grad, expected) < TOLERANCE


def _conv_by_name(x, weight, op, stride, groups=1):
    """Run `op` with its own kernel cut out of a shared 9x9 or 3x3 kernel, as PyTorch would."""
    size = weight.shape[-1]
    centre = size // 2
    k = int(op.rsplit("x", 1)[1])
    if op.startswith("dil_conv"):
        # Dilation 2: the taps sit every 2nd position around the centre.
        taps = slice(centre - (k - 1), centre + (k - 1) + 1, 2)
        sub_kernel = weight[:, :, taps, taps]
        return F.conv2d(x, sub_kernel, stride=stride, padding=k - 1, dilation=2, groups=groups)
    start = centre - k // 2
    sub_kernel = weight[:, :, start : start + k, start : start + k]
    return F.conv2d(x, sub_kernel, stride=stride, padding=k // 2, groups=groups)


@pytest.mark.parametrize("in_channels, out_channels", CHANNELS)
@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("input_size", [8, 11])
@pytest.mark.parametrize(
    "ops, size", [(NAS_BENCH_201_CONVS, 3), (DARTS_CONVS, 9), (["nor_conv_1x1"], 5)]
)
def test_merged_conv_equals_weighted_op_convs(
    in_channels, out_channels, stride, input_size, ops, size
):
    generator = make_generator(in_channels, out_channels, stride, input_size, size, len(ops))
    x = randn(generator, 2, in_channels, input_size, input_size)
    weight = randn(generator, out_channels, in_channels, size, size)
    alphas = torch.softmax(randn(generator, len(ops)), dim=0)
    masks = op_masks(ops, size, dtype=DTYPE)

    actual = F.conv2d(x, merged_kernel(weight, alphas, masks), stride=stride, padding=size // 2)
    expected = sum(
        alpha * _conv_by_name(x, weight, op, stride) for alpha, op in zip(alphas, ops)
    )
    assert rel_err(actual, expected) < TOLERANCE


@pytest.mark.parametrize("in_channels, out_channels", CHANNELS)
@pytest.mark.parametrize("stride", STRIDES)
def test_merged_separable_edge_equals_weighted_ops(in_channels, out_channels, stride):
    """Run a DARTS edge: shared depth-wise 9x9 kernel masked by M~, then a shared point-wise one."""
    generator = make_generator(in_channels, out_channels, stride, 12)
    x = randn(generator, 2, in_channels, 11, 11)
    w_depthwise = randn(generator, in_channels, 1, 9, 9)
    w_pointwise = randn(generator, out_channels, in_channels, 1, 1)
    alphas = torch.softmax(randn(generator, 4), dim=0)
    masks = op_masks(DARTS_CONVS, 9, dtype=DTYPE)

    merged_depthwise = merged_kernel(w_depthwise, alphas, masks)
    depthwise = F.conv2d(x, merged_depthwise, stride=stride, padding=4, groups=in_channels)
    actual = F.conv2d(depthwise, w_pointwise)

    expected = sum(
        alpha * F.conv2d(_conv_by_name(x, w_depthwise, op, stride, groups=in_channels), w_pointwise)
        for alpha, op in zip(alphas, DARTS_CONVS)
    )
    assert rel_err(actual, expected) < TOLERANCE

    # Proposition 3 then turns the whole edge into one normal convolution.
    dense = separable_to_dense(merged_depthwise, w_pointwise)
    assert rel_err(F.conv2d(x, dense, stride=stride, padding=4), expected) < TOLERANCE


@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("input_size", [8, 11])
def test_nas_bench_201_edge_is_one_conv(stride, input_size):
    """Skip, 3x3 average pooling (count_include_pad=True) and both convolutions as one kernel."""
    generator = make_generator(stride, input_size, 201)
    channels = 4
    x = randn(generator, 2, channels, input_size, input_size)
    weight = randn(generator, channels, channels, 3, 3)
    alpha_skip, alpha_pool, *alpha_convs = torch.softmax(randn(generator, 4), dim=0)
    masks = op_masks(NAS_BENCH_201_CONVS, 3, dtype=DTYPE)

    kernel = (
        merged_kernel(weight, torch.stack(alpha_convs), masks)
        + alpha_skip * identity_kernel(channels, 3, dtype=DTYPE)
        + alpha_pool * avg_pool_kernel(channels, 3, 3, dtype=DTYPE)
    )
    actual = F.conv2d(x, kernel, stride=stride, padding=1)

    expected = (
        alpha_skip * x[:, :, ::stride, ::stride]
        + alpha_pool * F.avg_pool2d(x, 3, stride, padding=1, count_include_pad=True)
        + sum(
            alpha * _conv_by_name(x, weight, op, stride)
            for alpha, op in zip(alpha_convs, NAS_BENCH_201_CONVS)
        )
    )
    assert rel_err(actual, expected) < TOLERANCE


def test_merged_kernel_keeps_weight_dtype():
    weight = torch.randn(2, 2, 3, 3, dtype=torch.float32)
    alphas = torch.tensor([0.5, 0.5], dtype=DTYPE)
    merged = merged_kernel(weight, alphas, op_masks(NAS_BENCH_201_CONVS, 3, dtype=DTYPE))
    assert merged.dtype == torch.float32


def test_saliency_mask_rejects_mismatched_alphas():
    masks = op_masks(DARTS_CONVS, 9)
    with pytest.raises(ValueError, match=r"one entry per mask \(4\), got shape \(3,\)"):
        saliency_mask(torch.ones(3), masks)
    with pytest.raises(ValueError, match=r"one entry per mask \(4\), got shape \(1, 4\)"):
        saliency_mask(torch.ones(1, 4), masks)
    with pytest.raises(ValueError, match="same ops"):
        saliency_mask({"sep_conv_3x3": 1.0}, masks)
    with pytest.raises(ValueError, match="masks as a dict"):
        saliency_mask({"a": 1.0}, [torch.ones(3, 3)])


def test_saliency_mask_rejects_bad_masks():
    with pytest.raises(ValueError, match="at least one mask"):
        saliency_mask(torch.ones(0), {})
    with pytest.raises(ValueError, match=r"mask 'b' has shape \(5, 5\)"):
        saliency_mask(torch.ones(2), {"a": torch.ones(3, 3), "b": torch.ones(5, 5)})
    with pytest.raises(ValueError, match="square 2-D"):
        saliency_mask(torch.ones(1), [torch.ones(1, 3, 3)])


def test_merged_kernel_rejects_size_mismatch():
    masks = op_masks(NAS_BENCH_201_CONVS, 3)
    with pytest.raises(ValueError, match="op_masks"):
        merged_kernel(torch.ones(2, 2, 5, 5), torch.ones(2), masks)
