"""Matplotlib figures of the notebooks.

The figures are the masks and the saliency mask M~ (Figure 1 of Wang et al., "MergeNAS", IJCAI
2020), alphas over the epochs, a NAS-Bench-201 cell as a graph, bar charts, and the per-epoch
accuracy curves of that paper's stability figure (its Figure 3).

Every function draws into a new figure (or a given axes) and returns it; saving is left to
`mergenas.lab.save_figure`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import FancyArrowPatch
from matplotlib.ticker import MaxNLocator

from mergenas.spaces.nb201 import EDGES, OPS, Cell, parse_cell

# Short symbols of the DARTS-space convolutions, used to label the regions of M~.
OP_SYMBOLS = {
    "sep_conv_3x3": "3",
    "sep_conv_5x5": "5",
    "dil_conv_3x3": "d3",
    "dil_conv_5x5": "d5",
    "nor_conv_1x1": "1",
    "nor_conv_3x3": "3",
}
OP_COLOURS = {
    "none": "#bbbbbb",
    "skip_connect": "#d62728",
    "nor_conv_1x1": "#1f77b4",
    "nor_conv_3x3": "#2ca02c",
    "avg_pool_3x3": "#ff7f0e",
}
METHOD_COLOURS = {"darts": "#d62728", "mergenas": "#1f77b4"}
METHOD_NAMES = {"darts": "DARTS", "mergenas": "MergeNAS"}


def _symbol(op: str) -> str:
    return OP_SYMBOLS.get(op, op)


def region_labels(masks: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Return, for each tap, the sum of alphas that M~ carries there, e.g. 'a3+a5+ad3'.

    Taps that no mask covers get an empty label.
    """
    names = list(masks)
    stacked = torch.stack([masks[name] for name in names]).bool()  # (n_ops, size, size)
    size = stacked.shape[-1]
    labels = []
    for row in range(size):
        labels.append([
            "+".join(f"a{_symbol(names[i])}" for i in range(len(names)) if stacked[i, row, col])
            for col in range(size)
        ])
    return labels


def _draw_grid(ax, size: int) -> None:
    ax.set_xticks(np.arange(-0.5, size, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, size, 1), minor=True)
    ax.grid(which="minor", color="lightgrey", linewidth=0.6)
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)


def plot_masks(masks: Mapping[str, torch.Tensor], saliency: torch.Tensor | None = None, alphas=None):
    """Draw each binary mask M_o and the saliency mask M~ with every region labelled.

    `masks` maps op name -> (size, size) mask, as from `mergenas.ops.op_masks`. The masks go in a
    grid of two columns on the left. `saliency` is M~, and when given it fills a large panel on the
    right, coloured by value, each tap labelled with the sum of alphas it carries or, when
    `alphas` (op -> value) is given, with that sum's value.
    """
    rows = (len(masks) + 1) // 2
    columns = 2 + (2 if saliency is not None else 0)
    figure = plt.figure(figsize=(2.6 * columns, 2.7 * rows))
    grid = figure.add_gridspec(rows, columns)
    for number, (name, mask) in enumerate(masks.items()):
        ax = figure.add_subplot(grid[number // 2, number % 2])
        size = mask.shape[-1]
        ax.imshow(mask.numpy(), cmap="Greys", vmin=0, vmax=1.6)
        _draw_grid(ax, size)
        ax.set_title(f"$M$ of {name}: {int(mask.sum())} taps", fontsize=9)
    if saliency is not None:
        draw_saliency(figure.add_subplot(grid[:, 2:]), masks, saliency, alphas)
    figure.tight_layout()
    return figure


def draw_saliency(ax, masks: Mapping[str, torch.Tensor], saliency: torch.Tensor, alphas=None) -> None:
    """Draw M~ into `ax`: colour by value, text = sum of alphas per tap (and its value)."""
    values = saliency.detach().double().numpy()
    size = values.shape[-1]
    ax.imshow(values, cmap="Blues", vmin=0, vmax=max(float(values.max()), 1e-9) * 1.25)
    _draw_grid(ax, size)
    labels = region_labels(masks)
    for row in range(size):
        for col in range(size):
            text = labels[row][col].replace("+", "+\n")
            if not text:
                continue
            if alphas is not None:
                text = f"{values[row, col]:.2f}"
            ax.text(col, row, text, ha="center", va="center", fontsize=6 if alphas is None else 7)
    title = r"$\tilde{M} = \sum_o \alpha_o M_o$"
    ax.set_title(title + ("\n(labels: sums of alphas)" if alphas is None else "\n(values)"), fontsize=10)


def plot_alphas(records: Sequence[dict], title: str = "", ops: Sequence[str] = OPS):
    """Plot softmax(alpha) of every op on each of the 6 edges over the epochs of a search log."""
    epochs = [record["epoch"] for record in records]
    alphas = np.array([record["alphas"] for record in records])  # (epochs, 6, 5)
    figure, axes = plt.subplots(2, 3, figsize=(11, 5.5), sharex=True, sharey=True)
    for e, ax in enumerate(axes.flat):
        for o, op in enumerate(ops):
            ax.plot(epochs, alphas[:, e, o], marker="o", markersize=3,
                    color=OP_COLOURS.get(op), label=op)
        to_node, from_node = EDGES[e]
        ax.set_title(f"edge {from_node} -> {to_node}", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[:, 0]:
        ax.set_ylabel("softmax(alpha)")
    axes[0, -1].legend(fontsize=8, loc="best")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


# Node positions of the cell drawing: input node 0 on the left, output node 3 on the right.
_NODE_XY = {0: (0.0, 0.0), 1: (1.0, 0.9), 2: (2.0, -0.9), 3: (3.0, 0.0)}


def draw_cell(cell: Cell | str, ax=None, title: str | None = None):
    """Draw a NAS-Bench-201 cell as a graph: nodes 0-3, one labelled arrow per edge.

    Edges with `none` are drawn dashed and grey because they carry nothing.
    """
    cell = parse_cell(cell)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.4))
    for (to_node, from_node), op in zip(EDGES, cell.ops):
        start, end = _NODE_XY[from_node], _NODE_XY[to_node]
        bend = 0.25 if to_node - from_node > 1 else 0.0
        arrow = FancyArrowPatch(
            start, end, connectionstyle=f"arc3,rad={bend}", arrowstyle="-|>", mutation_scale=14,
            shrinkA=16, shrinkB=16, color=OP_COLOURS[op], linewidth=2,
            linestyle="--" if op == "none" else "-",
        )
        ax.add_patch(arrow)
        # Label at the arc's midpoint: the chord midpoint shifted along the chord's normal.
        (x0, y0), (x1, y1) = start, end
        mid_x, mid_y = (x0 + x1) / 2, (y0 + y1) / 2
        normal_x, normal_y = (y1 - y0), -(x1 - x0)
        ax.text(mid_x + bend * normal_x / 2, mid_y + bend * normal_y / 2, op, fontsize=8,
                ha="center", va="center", color=OP_COLOURS[op],
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1})
    for node, (x, y) in _NODE_XY.items():
        ax.scatter([x], [y], s=700, color="white", edgecolor="black", zorder=3)
        ax.text(x, y, str(node), ha="center", va="center", fontsize=11, zorder=4)
    ax.set_xlim(-0.4, 3.4)
    ax.set_ylim(-1.5, 1.5)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    return ax.figure


def plot_bars(labels: Sequence[str], series: Mapping[str, Sequence[float]], ylabel: str = "",
              title: str = "", ax=None, log_scale: bool = False):
    """Draw grouped bars: one group per label, one bar per series (name -> values)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6))
    width = 0.8 / max(len(series), 1)
    positions = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        bars = ax.bar(positions + (i - (len(series) - 1) / 2) * width, values, width, label=name)
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(positions, labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if log_scale:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return ax.figure


def plot_border_effect(ratio: torch.Tensor):
    """Show (fixed-kernel avg pooling) / (NAS-Bench-201 avg pooling) per output pixel."""
    figure, ax = plt.subplots(figsize=(3.8, 3.4))
    image = ax.imshow(ratio.numpy(), cmap="viridis", vmin=0, vmax=1)
    size = ratio.shape[-1]
    for row in range(size):
        for col in range(size):
            ax.text(col, row, f"{ratio[row, col].item():.2f}", ha="center", va="center",
                    fontsize=7, color="white" if ratio[row, col] < 0.8 else "black")
    _draw_grid(ax, size)
    figure.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title("avg pool as a fixed kernel\ndivided by count_include_pad=False", fontsize=10)
    figure.tight_layout()
    return figure


def plot_stability(curves: Mapping[tuple[str, float], Sequence[Sequence[float]]],
                   optimum: float | None = None, dataset_label: str = "CIFAR-10 test accuracy (%)"):
    """Plot the benchmark accuracy of the cell derived at each epoch, like the paper's Figure 3.

    `curves` maps (method, weight decay) to one accuracy list per seed (index = epoch - 1). Each
    weight decay gets a panel, in which a line is the mean over seeds and its band spans min to max.
    """
    decays = sorted({decay for _, decay in curves})
    figure, axes = plt.subplots(1, len(decays), figsize=(5.2 * len(decays), 3.8), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, decay in zip(axes, decays):
        for (method, curve_decay), runs in sorted(curves.items()):
            if curve_decay != decay:
                continue
            values = np.array(runs, dtype=float)  # (seeds, epochs)
            epochs = np.arange(1, values.shape[1] + 1)
            colour = METHOD_COLOURS.get(method)
            ax.plot(epochs, values.mean(axis=0), marker="o", markersize=3, color=colour,
                    label=f"{METHOD_NAMES.get(method, method)} (mean of {len(runs)})")
            ax.fill_between(epochs, values.min(axis=0), values.max(axis=0), color=colour, alpha=0.15)
        if optimum is not None:
            ax.axhline(optimum, color="black", linestyle=":", linewidth=1, label=f"optimum {optimum:.2f}")
        ax.set_title(f"weight decay {decay:g}", fontsize=10)
        ax.set_xlabel("search epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    axes[0].set_ylabel(dataset_label)
    figure.tight_layout()
    return figure


def saliency_widget(masks: Mapping[str, torch.Tensor], alphas: Mapping[str, float]):
    """Return an ipywidgets box with one slider per alpha and an image of M~ that follows them.

    The figure is rendered to PNG bytes for an `ipywidgets.Image`, not drawn into an Output
    widget: a headless executor (papermill, nbval) then only records widget state. Moving a
    slider needs a live kernel, so a static copy of the notebook shows the first image at most.
    """
    import io

    import ipywidgets

    from mergenas.ops import saliency_mask

    names = list(masks)
    double_masks = {name: mask.double() for name, mask in masks.items()}
    sliders = {
        name: ipywidgets.FloatSlider(
            value=float(alphas[name]), min=0.0, max=1.0, step=0.05, description=f"alpha {name}",
            continuous_update=False, style={"description_width": "initial"},
        )
        for name in names
    }
    image = ipywidgets.Image(format="png")

    def redraw(change=None) -> None:
        alpha = {name: torch.tensor(slider.value, dtype=torch.float64) for name, slider in sliders.items()}
        figure, ax = plt.subplots(figsize=(4.6, 4.6))
        draw_saliency(ax, masks, saliency_mask(alpha, double_masks), alphas=alpha)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        plt.close(figure)
        image.value = buffer.getvalue()

    for slider in sliders.values():
        slider.observe(redraw, names="value")
    redraw()
    return ipywidgets.VBox([ipywidgets.VBox(list(sliders.values())), image])


# -- DARTS-space cells -------------------------------------------------------------------------

DARTS_OP_COLOURS = {
    "skip_connect": "#d62728",
    "max_pool_3x3": "#9467bd",
    "avg_pool_3x3": "#ff7f0e",
    "sep_conv_3x3": "#2ca02c",
    "sep_conv_5x5": "#1f77b4",
    "dil_conv_3x3": "#8c564b",
    "dil_conv_5x5": "#e377c2",
}
# Node positions of a DARTS cell: the two inputs on the left, the 4 intermediate nodes on a
# descending diagonal, the output (concatenation) on the right.
_DARTS_NODE_XY = {
    "c_{k-2}": (0.0, 1.3),
    "c_{k-1}": (0.0, -1.3),
    "0": (2.0, 1.7),
    "1": (3.6, 0.6),
    "2": (5.2, -0.5),
    "3": (6.8, -1.6),
    "c_{k}": (8.6, 0.0),
}


def _passes_near_node(start, end, limit: float = 0.5) -> bool:
    """Tell whether the straight segment start-end passes within `limit` of another node."""
    a, b = np.array(start), np.array(end)
    for point in _DARTS_NODE_XY.values():
        p = np.array(point)
        if np.allclose(p, a) or np.allclose(p, b):
            continue
        t = np.clip(np.dot(p - a, b - a) / np.dot(b - a, b - a), 0.0, 1.0)
        if np.linalg.norm(a + t * (b - a) - p) < limit:
            return True
    return False


def _darts_node_name(source: int) -> str:
    return ("c_{k-2}", "c_{k-1}")[source] if source < 2 else str(source - 2)


def draw_darts_cell(pairs, concat=(2, 3, 4, 5), ax=None, title: str | None = None):
    """Draw one DARTS-space cell as a graph, in the layout of the cells of DARTS and MergeNAS.

    `pairs` are the cell's (op, input) pairs of a `Genotype` (`genotype.normal` or
    `genotype.reduce`): entries 2i and 2i+1 feed intermediate node i, and input 0 is c_{k-2},
    1 is c_{k-1} and 2..5 are nodes 0..3. Each edge is labelled with its op; grey arrows join
    the nodes in `concat` to the output c_{k}.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(8.5, 4.0))
    for position, (op, source) in enumerate(pairs):
        start = _DARTS_NODE_XY[_darts_node_name(source)]
        end = _DARTS_NODE_XY[str(position // 2)]
        bend = 0.35 if _passes_near_node(start, end) else 0.0
        colour = DARTS_OP_COLOURS.get(op, "black")
        ax.add_patch(FancyArrowPatch(
            start, end, connectionstyle=f"arc3,rad={bend}", arrowstyle="-|>", mutation_scale=12,
            shrinkA=15, shrinkB=15, color=colour, linewidth=1.8,
        ))
        # Label at the arc's midpoint: the chord midpoint shifted along the chord's normal.
        (x0, y0), (x1, y1) = start, end
        label_x = (x0 + x1) / 2 + bend * (y1 - y0) / 2
        label_y = (y0 + y1) / 2 - bend * (x1 - x0) / 2
        ax.text(label_x, label_y, op, fontsize=7, ha="center", va="center", color=colour,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 0.5})
    for node in concat:
        start = _DARTS_NODE_XY[_darts_node_name(node)]
        bend = 0.35 if _passes_near_node(start, _DARTS_NODE_XY["c_{k}"]) else 0.0
        ax.add_patch(FancyArrowPatch(
            start, _DARTS_NODE_XY["c_{k}"], connectionstyle=f"arc3,rad={bend}", arrowstyle="-|>",
            mutation_scale=10, shrinkA=15, shrinkB=15, color="#bbbbbb", linewidth=1,
        ))
    for name, (x, y) in _DARTS_NODE_XY.items():
        is_io = name.startswith("c_")
        ax.scatter([x], [y], s=900, color="#dbe9f6" if is_io else "white", edgecolor="black", zorder=3)
        ax.text(x, y, f"${name}$" if is_io else name, ha="center", va="center", fontsize=9, zorder=4)
    ax.set_xlim(-0.6, 9.2)
    ax.set_ylim(-2.4, 2.4)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    return ax.figure


def plot_darts_genotypes(genotypes: Mapping[str, object]):
    """Draw the normal and the reduction cell of each genotype (name -> `Genotype`), one row each."""
    figure, axes = plt.subplots(len(genotypes), 2, figsize=(15, 3.9 * len(genotypes)), squeeze=False)
    for row, (name, genotype) in zip(axes, genotypes.items()):
        draw_darts_cell(genotype.normal, genotype.normal_concat, row[0], f"{name}: normal cell")
        draw_darts_cell(genotype.reduce, genotype.reduce_concat, row[1], f"{name}: reduction cell")
    figure.tight_layout()
    return figure


def plot_learning_curves(trainings: Mapping[str, Sequence[dict]]):
    """Plot the training loss and accuracy per epoch of each training (name -> its log records)."""
    figure, (loss_ax, accuracy_ax) = plt.subplots(1, 2, figsize=(11, 3.6))
    for name, records in trainings.items():
        epochs = [record["epoch"] for record in records]
        loss_ax.plot(epochs, [record["train_loss"] for record in records], marker="o", markersize=3, label=name)
        accuracy_ax.plot(epochs, [record["train_acc"] for record in records], marker="o", markersize=3, label=name)
    loss_ax.set_ylabel("training loss (with the auxiliary head)")
    accuracy_ax.set_ylabel("training accuracy (%)")
    for ax in (loss_ax, accuracy_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    accuracy_ax.legend(fontsize=8)
    figure.tight_layout()
    return figure
