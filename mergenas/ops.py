"""Candidate operations of a MergeNAS edge written as dense convolution kernels.

Implements the kernel algebra of X. Wang, C. Xue, J. Yan, X. Yang, Y. Hu and K. Sun,
"MergeNAS: Merge Operations into One for Differentiable Architecture Search", IJCAI 2020,
Section 3. Convolution is linear in its kernel, so a weighted sum of convolutions equals one
convolution with the weighted sum of their kernels once all kernels have a common size:

- Proposition 1 (zero padding): a k x k kernel padded by n zeros on every side gives the same
  output as the k x k kernel when the input padding also grows by n (`pad_kernel`).
- Proposition 2 (dilation): a convolution with kernel size k and dilation rate r equals a normal
  convolution with kernel size r(k-1)+1 that has the original weights every r taps and zeros
  between them (`dilate_kernel`).
- Proposition 3 (separable): a depth-wise kernel W_d (C_in, 1, k, k) followed by a point-wise
  kernel W_p (C_out, C_in, 1, 1), with nothing in between, equals one normal convolution with
  W_s[c, m, p, q] = W_d[m, 0, p, q] * W_p[c, m, 0, 0] (`separable_to_dense`).
- Parameter-free operations: skip-connect is a convolution with the identity matrix at the centre
  tap (`identity_kernel`), and k x k average pooling is a depth-wise kernel filled with 1/(k*k)
  followed by an identity point-wise kernel (`avg_pool_kernel`).

MergeNAS shares one large kernel W per edge. Each candidate operation o uses the masked view
M_o * W, where the binary mask M_o marks its receptive field (`op_masks`). The edge output is then
one convolution with (M~ * W), where M~ = sum_o alpha_o M_o is the saliency mask
(`saliency_mask`, `merged_kernel`).

Every kernel returned here has shape (C_out, C_in, size, size) with an odd size, and works with
`torch.nn.functional.conv2d(x, kernel, stride=s, padding=size // 2)`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "pad_kernel",
    "dilate_kernel",
    "separable_to_dense",
    "identity_kernel",
    "avg_pool_kernel",
    "receptive_field",
    "op_masks",
    "saliency_mask",
    "merged_kernel",
    "DIL_CONV_RATE",
    "GENERIC_OPS",
    "SUPPORTED_OPS",
]

# Dilation rate of the DARTS-space `dil_conv_KxK` operations.
DIL_CONV_RATE = 2

# Operation families with weights: name prefix -> dilation rate.
_CONV_FAMILIES = {
    "nor_conv": 1,
    "sep_conv": 1,
    "conv": 1,
    "dil_conv": DIL_CONV_RATE,
}
_CONV_NAME = re.compile(r"^(nor_conv|sep_conv|dil_conv|conv)_(\d+)x(\d+)$")
_POOL_NAME = re.compile(r"^(avg_pool|max_pool)_(\d+)x(\d+)$")

# Advice per parameter-free operation, given when a caller requests its mask.
_PARAMETER_FREE = {
    "none": "It outputs zeros and adds nothing to the edge, so leave it out.",
    "skip_connect": "Merge it with identity_kernel, or add the input separately.",
    "avg_pool": "Merge it with avg_pool_kernel, or apply it separately.",
    "max_pool": "Max pooling is not linear, so apply it separately.",
}

# Named ops with weights that `receptive_field` and `op_masks` accept.
SUPPORTED_OPS = (
    "nor_conv_1x1",
    "nor_conv_3x3",
    "nor_conv_5x5",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
# Generic names, for any odd K, that `receptive_field` and `op_masks` accept as well.
GENERIC_OPS = ("conv_KxK", "nor_conv_KxK", "sep_conv_KxK", "dil_conv_KxK")


def _check_size(size: int, name: str = "size") -> None:
    """Raise ValueError unless `size` is a positive odd int."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise ValueError(f"{name} must be an int, got {size!r} of type {type(size).__name__}")
    if size < 1 or size % 2 == 0:
        raise ValueError(
            f"{name} must be a positive odd int so that the kernel has a centre tap, got {size}"
        )


def _check_positive(value: int, name: str) -> None:
    """Raise ValueError unless `value` is a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_square_kernel(weight: torch.Tensor, name: str) -> int:
    """Return the side k of a kernel (C_out, C_in, k, k), or raise ValueError for other shapes."""
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(weight).__name__}")
    if weight.ndim != 4:
        raise ValueError(
            f"{name} must be 4-D (C_out, C_in, k, k), "
            f"got {weight.ndim}-D shape {tuple(weight.shape)}"
        )
    height, width = weight.shape[-2:]
    if height != width:
        raise ValueError(f"{name} must have a square k x k kernel, got {height} x {width}")
    return height


def pad_kernel(weight: torch.Tensor, size: int) -> torch.Tensor:
    """Embed a k x k kernel at the centre of a size x size kernel of zeros (Proposition 1).

    `weight` has shape (C_out, C_in, k, k) with k odd, and size >= k must be odd as well. A
    convolution with the result and padding size // 2 equals the convolution with `weight` and
    padding k // 2. Gradients flow back to `weight`.
    """
    k = _check_square_kernel(weight, "weight")
    if k % 2 == 0:
        raise ValueError(f"weight must have an odd kernel size so that it has a centre, got {k}")
    _check_size(size)
    if size < k:
        raise ValueError(f"size must be at least the kernel size {k}, got {size}")

    border = (size - k) // 2
    # (C_out, C_in, k, k) -> (C_out, C_in, size, size)
    return F.pad(weight, (border, border, border, border))


def dilate_kernel(weight: torch.Tensor, rate: int) -> torch.Tensor:
    """Write a dilated convolution kernel as a dense kernel (Proposition 2).

    `weight` has shape (C_out, C_in, k, k). The result has side r(k-1)+1 with the weights every
    `rate` taps and zeros between them. A convolution with the result and padding
    r(k-1) // 2 equals `conv2d(x, weight, dilation=rate)` with the same padding. Gradients flow
    back to `weight`.
    """
    k = _check_square_kernel(weight, "weight")
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
        raise ValueError(f"rate must be a positive int, got {rate!r}")

    size = rate * (k - 1) + 1
    dense = weight.new_zeros(*weight.shape[:2], size, size)
    # (C_out, C_in, k, k) -> every rate-th tap of (C_out, C_in, size, size)
    dense[:, :, ::rate, ::rate] = weight
    return dense


def separable_to_dense(w_depthwise: torch.Tensor, w_pointwise: torch.Tensor) -> torch.Tensor:
    """Fuse a depth-wise and a point-wise kernel into one normal kernel (Proposition 3).

    `w_depthwise` has shape (C_in, 1, k, k), used with groups=C_in, and `w_pointwise` has shape
    (C_out, C_in, 1, 1). The result W_s has shape (C_out, C_in, k, k) with
    W_s[c, m, p, q] = W_d[m, 0, p, q] * W_p[c, m, 0, 0]. It matches the pair only when nothing
    (activation, normalisation, bias) sits between the two convolutions.
    """
    _check_square_kernel(w_depthwise, "w_depthwise")
    if not isinstance(w_pointwise, torch.Tensor) or w_pointwise.ndim != 4:
        shape = tuple(w_pointwise.shape) if isinstance(w_pointwise, torch.Tensor) else None
        raise ValueError(f"w_pointwise must be a 4-D tensor (C_out, C_in, 1, 1), got shape {shape}")

    in_channels = w_depthwise.shape[0]
    if w_depthwise.shape[1] != 1:
        raise ValueError(
            "w_depthwise must have shape (C_in, 1, k, k) with one filter per input channel, "
            f"got {tuple(w_depthwise.shape)}"
        )
    if w_pointwise.shape[1:] != (in_channels, 1, 1):
        raise ValueError(
            f"w_pointwise must have shape (C_out, {in_channels}, 1, 1) to match "
            f"w_depthwise {tuple(w_depthwise.shape)}, got {tuple(w_pointwise.shape)}"
        )
    if w_depthwise.dtype != w_pointwise.dtype:
        raise ValueError(
            f"w_depthwise and w_pointwise must have the same dtype, got {w_depthwise.dtype} "
            f"and {w_pointwise.dtype}"
        )

    # (C_out, C_in, 1, 1) * (1, C_in, k, k) -> (C_out, C_in, k, k)
    return w_pointwise * w_depthwise.transpose(0, 1)


def identity_kernel(
    channels: int,
    size: int,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Build the skip-connect kernel: the identity matrix at the centre tap of a size x size kernel.

    The result has shape (channels, channels, size, size). With padding size // 2 and stride s,
    the convolution returns x[:, :, ::s, ::s]. `dtype` defaults to torch's default dtype.
    """
    _check_positive(channels, "channels")
    _check_size(size)

    kernel = torch.zeros(channels, channels, size, size, dtype=dtype, device=device)
    centre = size // 2
    kernel[:, :, centre, centre] = torch.eye(channels, dtype=dtype, device=device)
    return kernel


def avg_pool_kernel(
    channels: int,
    k: int,
    size: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Build k x k average pooling as a dense (channels, channels, size, size) kernel.

    The kernel has 1/(k*k) on every tap of the diagonal channel pairs (c, c), zero-padded from
    k x k to size x size (size defaults to k). It is a depth-wise kernel followed by an identity
    point-wise kernel, fused by Proposition 3.

    A fixed kernel cannot know which taps fall on padding, so it counts padded zeros. With padding
    size // 2 the convolution equals `avg_pool2d(x, k, stride, padding=k // 2,
    count_include_pad=True)`. NAS-Bench-201's avg_pool_3x3 uses `count_include_pad=False`, which
    divides by the number of in-image taps instead. The two agree on every output pixel whose
    window lies inside the image. On the border pixels this kernel returns the benchmark's value
    times (in-image taps) / (k*k).
    """
    _check_positive(channels, "channels")
    _check_size(k, "k")
    size = k if size is None else size
    _check_size(size)
    if size < k:
        raise ValueError(f"size must be at least the pooling size k={k}, got {size}")

    depthwise = torch.full((channels, 1, k, k), 1.0 / (k * k), dtype=dtype, device=device)
    pointwise = torch.eye(channels, dtype=dtype, device=device)[:, :, None, None]
    # (channels, 1, k, k) and (channels, channels, 1, 1) -> (channels, channels, k, k)
    dense = separable_to_dense(depthwise, pointwise)
    return pad_kernel(dense, size)


def _parse_conv(op: str) -> tuple[int, int] | None:
    """Return (kernel size, dilation rate) of a convolution name, or None for other names."""
    match = _CONV_NAME.match(op)
    if match is None:
        return None
    family, height, width = match.group(1), int(match.group(2)), int(match.group(3))
    if height != width or height % 2 == 0:
        raise ValueError(f"op {op!r} must have an odd square kernel size such as 3x3")
    return height, _CONV_FAMILIES[family]


def _parameter_free_reason(op: str) -> str | None:
    """Return how a parameter-free op joins an edge, or None if `op` is not parameter-free."""
    if op in _PARAMETER_FREE:
        return _PARAMETER_FREE[op]
    match = _POOL_NAME.match(op)
    if match is not None:
        return _PARAMETER_FREE[match.group(1)]
    return None


def _unknown_op_error(op: object) -> ValueError:
    return ValueError(
        f"unknown op {op!r}. Supported ops with weights are {', '.join(SUPPORTED_OPS)}, and "
        f"{', '.join(GENERIC_OPS)} for odd K. The parameter-free ops are none, skip_connect, "
        "avg_pool_3x3 and max_pool_3x3."
    )


def receptive_field(op: str) -> int:
    """Return the side length of the square input window that one output pixel of `op` reads.

    Convolutions give r(k-1)+1 (9 for dil_conv_5x5), pools of k x k give k, skip_connect gives 1,
    and `none` gives 0 because it reads no input.
    """
    if not isinstance(op, str):
        raise _unknown_op_error(op)
    conv = _parse_conv(op)
    if conv is not None:
        k, rate = conv
        return rate * (k - 1) + 1
    if op == "none":
        return 0
    if op == "skip_connect":
        return 1
    pool = _POOL_NAME.match(op)
    if pool is not None and pool.group(2) == pool.group(3):
        return int(pool.group(2))
    raise _unknown_op_error(op)


def op_masks(
    ops: Sequence[str],
    size: int,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Build the binary receptive-field mask of each op inside a shared size x size kernel.

    Returns a dict op name -> (size, size) tensor of zeros and ones, in the order of `ops`. A
    k x k convolution marks the centre k x k taps, and dil_conv_KxK (rate 2) marks every 2nd
    tap of the centre 2(K-1)+1 square. Parameter-free ops (none, skip_connect, pools) have no
    mask in the shared kernel and raise ValueError; merge them with `identity_kernel` or
    `avg_pool_kernel`, or apply them separately. `dtype` defaults to torch's default dtype.
    """
    if isinstance(ops, str):
        raise ValueError(f"ops must be a sequence of op names, got the single string {ops!r}")
    _check_size(size)

    masks: dict[str, torch.Tensor] = {}
    for op in ops:
        if op in masks:
            raise ValueError(f"op {op!r} appears twice in ops, but each op needs exactly one mask")
        masks[op] = _op_mask(op, size, dtype, device)
    return masks


def _op_mask(
    op: str, size: int, dtype: torch.dtype | None, device: torch.device | str | None
) -> torch.Tensor:
    """Return the (size, size) receptive-field mask of one op, or raise ValueError."""
    reason = _parameter_free_reason(op) if isinstance(op, str) else None
    if reason is not None:
        raise ValueError(
            f"op {op!r} is parameter-free and has no mask in the shared kernel. {reason}"
        )
    conv = _parse_conv(op) if isinstance(op, str) else None
    if conv is None:
        raise _unknown_op_error(op)

    k, rate = conv
    field = rate * (k - 1) + 1
    if field > size:
        raise ValueError(
            f"op {op!r} has a {field}x{field} receptive field, so size must be at least {field}, "
            f"got {size}"
        )
    taps = torch.ones(1, 1, k, k, dtype=dtype, device=device)
    # (1, 1, k, k) -> (1, 1, field, field) -> (1, 1, size, size) -> (size, size)
    return pad_kernel(dilate_kernel(taps, rate), size)[0, 0]


def saliency_mask(
    alphas: torch.Tensor | Mapping[str, torch.Tensor | float],
    masks: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
) -> torch.Tensor:
    """Compute the saliency mask M~ = sum_o alpha_o M_o of one edge.

    `masks` is a dict op name -> (size, size) mask, as from `op_masks`, or a sequence of masks.
    `alphas` is either a 1-D tensor aligned with the order of `masks`, or a dict op name -> alpha
    with exactly the keys of `masks`. The sum keeps autograd, so gradients reach the alphas. The
    result has the promoted dtype of alphas and masks and the device of the alphas.
    """
    names, mask_list = _unpack_masks(masks)
    alpha_vector = _alpha_vector(alphas, names, len(mask_list))

    stacked = torch.stack(mask_list)  # (n_ops, size, size)
    dtype = torch.promote_types(alpha_vector.dtype, stacked.dtype)
    stacked = stacked.to(dtype=dtype, device=alpha_vector.device)
    # (n_ops,) x (n_ops, size, size) -> (size, size)
    return torch.tensordot(alpha_vector.to(dtype), stacked, dims=1)


def _unpack_masks(masks) -> tuple[list[str] | None, list[torch.Tensor]]:
    """Split `masks` into op names (None for a sequence) and a list of equal-shape 2-D masks."""
    if isinstance(masks, Mapping):
        names, mask_list = list(masks.keys()), list(masks.values())
    elif isinstance(masks, Sequence) and not isinstance(masks, str):
        names, mask_list = None, list(masks)
    else:
        raise ValueError(
            "masks must be a dict op name -> mask or a sequence of masks, "
            f"got {type(masks).__name__}"
        )
    if not mask_list:
        raise ValueError("masks must contain at least one mask, got none")

    first_shape = None
    for index, mask in enumerate(mask_list):
        label = repr(names[index]) if names is not None else f"number {index}"
        if not isinstance(mask, torch.Tensor) or mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"mask {label} must be a square 2-D tensor (size, size), got {shape}")
        if first_shape is None:
            first_shape = mask.shape
        elif mask.shape != first_shape:
            raise ValueError(
                f"mask {label} has shape {tuple(mask.shape)}, but the first mask has "
                f"{tuple(first_shape)}; all masks of an edge must share one size"
            )
    return names, mask_list


def _alpha_vector(alphas, names: list[str] | None, n_ops: int) -> torch.Tensor:
    """Return alphas as a 1-D tensor in the order of the masks."""
    if isinstance(alphas, Mapping):
        if names is None:
            raise ValueError("alphas given as a dict need masks as a dict with the same op names")
        if set(alphas) != set(names):
            raise ValueError(
                f"alphas and masks must name the same ops, got alphas for {sorted(alphas)} and "
                f"masks for {sorted(names)}"
            )
        values = [torch.as_tensor(alphas[name]) for name in names]
        if any(value.ndim != 0 for value in values):
            raise ValueError("each alpha in the dict must be a scalar (0-D tensor or float)")
        return torch.stack(values)

    if not isinstance(alphas, torch.Tensor):
        raise ValueError(
            "alphas must be a 1-D tensor or a dict op name -> alpha, "
            f"got {type(alphas).__name__}"
        )
    if alphas.ndim != 1 or alphas.shape[0] != n_ops:
        raise ValueError(
            f"alphas must be a 1-D tensor with one entry per mask ({n_ops}), got shape "
            f"{tuple(alphas.shape)}"
        )
    return alphas


def merged_kernel(
    weight: torch.Tensor,
    alphas: torch.Tensor | Mapping[str, torch.Tensor | float],
    masks: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
) -> torch.Tensor:
    """Build the MergeNAS edge kernel M~ * W from the shared kernel and the alphas.

    `weight` has shape (C_out, C_in, size, size), and the saliency mask M~ of `alphas` and `masks`
    (see `saliency_mask`) broadcasts over its first two dims. For normal convolutions the edge
    output is `conv2d(z, result, padding=size // 2)`. For separable convolutions pass the shared
    depth-wise kernel (C_in, 1, size, size) and follow the depth-wise convolution with the shared
    point-wise one. The result keeps the dtype and device of `weight`.
    """
    size = _check_square_kernel(weight, "weight")
    mask = saliency_mask(alphas, masks)
    if mask.shape[0] != size:
        raise ValueError(
            f"masks have size {mask.shape[0]} x {mask.shape[1]}, but weight has a {size} x {size} "
            f"kernel. Build the masks with op_masks(ops, {size})."
        )
    # (size, size) broadcast over (C_out, C_in, size, size)
    return weight * mask.to(dtype=weight.dtype, device=weight.device)
