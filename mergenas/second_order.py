"""The unrolled (second-order) architecture step of DARTS (Liu et al., ICLR 2019, Eq. 6-8).

With w the weights and alpha the architecture parameters, one SGD step with momentum on the
training loss gives the unrolled weights

    w' = w - lr * (momentum * buffer + grad_w L_train(w, alpha) + weight_decay * w),

and the architecture gradient is the gradient of L_val(w', alpha) through w':

    grad_alpha L_val(w', alpha) - lr * H v,   v = grad_w' L_val(w', alpha),
    H v = grad_alpha (grad_w L_train(w, alpha) . v).

DARTS replaces the Hessian-vector product H v by the central difference

    (grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)) / (2 eps),
    w+- = w +- eps v,   eps = 0.01 / ||v||,

whose error is O(eps^2) times the third derivative of L_train along v. `hessian="exact"` uses
double backward instead, for tests. The model needs `weight_parameters()`, `arch_parameters()`
and a forward that returns logits. Running statistics of BatchNorm layers are restored after
the step, so only the alphas (and the architecture optimiser's state) change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HESSIAN_MODES = ("finite_difference", "exact")
FINITE_DIFFERENCE_SCALE = 0.01  # ||w+ - w|| = ||w- - w||


def _loss(model, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(images)
    return F.cross_entropy(logits, labels), logits


def _sgd_settings(weight_optimizer: torch.optim.Optimizer) -> tuple[float, float, float]:
    group = weight_optimizer.param_groups[0]
    return group["lr"], group.get("momentum", 0.0), group.get("weight_decay", 0.0)


def _momentum_buffers(weight_optimizer: torch.optim.Optimizer, weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """Return each weight's momentum buffer, zeros before the optimiser's first step."""
    buffers = []
    for weight in weights:
        buffer = weight_optimizer.state.get(weight, {}).get("momentum_buffer")
        buffers.append(torch.zeros_like(weight) if buffer is None else buffer)
    return buffers


def unrolled_weights(model, images, labels, weight_optimizer, create_graph: bool = False) -> list[torch.Tensor]:
    """Return w' after one SGD step with momentum and weight decay on (images, labels).

    With `create_graph` the result stays differentiable with respect to the alphas (and w).
    """
    lr, momentum, weight_decay = _sgd_settings(weight_optimizer)
    weights = list(model.weight_parameters())
    loss, _ = _loss(model, images, labels)
    grads = torch.autograd.grad(loss, weights, create_graph=create_graph)
    buffers = _momentum_buffers(weight_optimizer, weights)
    return [
        w - lr * (momentum * b + g + weight_decay * w)
        for w, b, g in zip(weights, buffers, grads)
    ]


def _hessian_vector_product(model, images, labels, vector: list[torch.Tensor], hessian: str) -> list[torch.Tensor]:
    """Return grad_alpha (grad_w L_train(w, alpha) . vector), exactly or by central differences."""
    weights = list(model.weight_parameters())
    alphas = list(model.arch_parameters())
    if hessian == "exact":
        loss, _ = _loss(model, images, labels)
        grads = torch.autograd.grad(loss, weights, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vector))
        return list(torch.autograd.grad(dot, alphas, allow_unused=True))

    norm = torch.sqrt(sum((v * v).sum() for v in vector))
    eps = FINITE_DIFFERENCE_SCALE / norm
    with torch.no_grad():
        for w, v in zip(weights, vector):
            w.add_(eps * v)
    loss, _ = _loss(model, images, labels)
    grads_plus = torch.autograd.grad(loss, alphas, allow_unused=True)
    with torch.no_grad():
        for w, v in zip(weights, vector):
            w.sub_(2 * eps * v)
    loss, _ = _loss(model, images, labels)
    grads_minus = torch.autograd.grad(loss, alphas, allow_unused=True)
    return [
        _zero_if_none(plus, alpha).sub(_zero_if_none(minus, alpha)).div(2 * eps)
        for plus, minus, alpha in zip(grads_plus, grads_minus, alphas)
    ]


def _zero_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def architecture_gradient(
    model, x_train, y_train, x_valid, y_valid, weight_optimizer, hessian: str = "finite_difference"
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Compute the second-order architecture gradient without changing the model.

    Returns (one gradient per arch parameter, validation loss, validation logits), the loss and
    logits taken at the unrolled weights w'. The weights are restored exactly from a copy.
    """
    if hessian not in HESSIAN_MODES:
        raise ValueError(f"hessian must be one of {', '.join(HESSIAN_MODES)}, got {hessian!r}")
    lr, _, _ = _sgd_settings(weight_optimizer)
    weights = list(model.weight_parameters())
    alphas = list(model.arch_parameters())
    saved_weights = [w.detach().clone() for w in weights]
    saved_buffers = {name: b.detach().clone() for name, b in model.named_buffers()}

    try:
        with torch.no_grad():
            unrolled = unrolled_weights_no_graph(model, x_train, y_train, weight_optimizer)
            for w, new in zip(weights, unrolled):
                w.copy_(new)
        valid_loss, valid_logits = _loss(model, x_valid, y_valid)
        grads = torch.autograd.grad(valid_loss, alphas + weights, allow_unused=True)
        alpha_grads = [_zero_if_none(g, a) for g, a in zip(grads[: len(alphas)], alphas)]
        vector = [_zero_if_none(g, w) for g, w in zip(grads[len(alphas):], weights)]

        with torch.no_grad():
            for w, saved in zip(weights, saved_weights):
                w.copy_(saved)
        products = _hessian_vector_product(model, x_train, y_train, vector, hessian)
        result = [g - lr * p for g, p in zip(alpha_grads, products)]
    finally:
        with torch.no_grad():
            for w, saved in zip(weights, saved_weights):
                w.copy_(saved)
            for name, buffer in model.named_buffers():
                buffer.copy_(saved_buffers[name])
    return result, valid_loss.detach(), valid_logits.detach()


def unrolled_weights_no_graph(model, images, labels, weight_optimizer) -> list[torch.Tensor]:
    """Return w' as detached tensors (see `unrolled_weights`)."""
    with torch.enable_grad():
        return [w.detach() for w in unrolled_weights(model, images, labels, weight_optimizer)]


def second_order_alpha_step(model, x_train, y_train, x_valid, y_valid, weight_optimizer, arch_optimizer):
    """Take one architecture step with the unrolled gradient; return (valid loss, valid logits).

    The loss and logits are detached and taken at the unrolled weights w'.
    """
    grads, valid_loss, valid_logits = architecture_gradient(
        model, x_train, y_train, x_valid, y_valid, weight_optimizer
    )
    arch_optimizer.zero_grad(set_to_none=True)
    for alpha, grad in zip(model.arch_parameters(), grads):
        alpha.grad = grad
    arch_optimizer.step()
    return valid_loss, valid_logits
