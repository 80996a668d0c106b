"""Heat map of passkey accuracy by prompt length x key depth (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def accuracy_grid(result: dict[str, Any]) -> tuple[list[int], list[float], list[list[float]]]:
    """``(lengths, depths, grid)`` from a :func:`passkey_accuracy` result; ``grid[d][l]`` is
    the accuracy at ``depths[d]`` and ``lengths[l]`` (NaN for a cell that was not run)."""
    lengths = sorted({c["length"] for c in result["cells"]})
    depths = sorted({c["depth"] for c in result["cells"]})
    grid = [[float("nan")] * len(lengths) for _ in depths]
    for cell in result["cells"]:
        grid[depths.index(cell["depth"])][lengths.index(cell["length"])] = cell["accuracy"]
    return lengths, depths, grid


def plot_passkey_heatmap(result: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Writes a PNG: x = prompt length (tokens), y = key depth (0 = start), colour = accuracy.

    Uses matplotlib's Agg canvas directly (no pyplot state, no display). Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lengths, depths, grid = accuracy_grid(result)
    figure = Figure(figsize=(1.2 + 0.9 * len(lengths), 1.0 + 0.55 * len(depths)), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto", origin="upper")
    axes.set_xticks(range(len(lengths)), [str(length) for length in lengths])
    axes.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    axes.set_xlabel("prompt length (tokens)")
    axes.set_ylabel("key depth")
    for row, values in enumerate(grid):
        for column, value in enumerate(values):
            if value == value:  # not NaN
                axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=8)
    axes.set_title(title or f"passkey accuracy (overall {result['accuracy']:.2f}, {result['trials']} trials/cell)",
                   fontsize=9)
    figure.colorbar(image, ax=axes, label="accuracy")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
