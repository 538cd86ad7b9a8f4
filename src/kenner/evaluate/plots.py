"""PNG plots for run folders: confusion matrix, reliability diagram, generic curves.

Figures are drawn on matplotlib's Agg canvas without pyplot (no global state, no display) and
written atomically.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

from kenner.evaluate.calibration import calibration_bins, expected_calibration_error
from kenner.io import atomic_write_bytes

MAX_VALUES_SHOWN = 30  # numbers are written in the cells up to this many classes
MAX_LABEL_CHARS = 28


def plot_confusion_matrix(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    class_names: Sequence[str],
    path: str | Path,
    *,
    normalize: bool = True,
) -> Path:
    """Confusion matrix (rows: true class, normalised per row by default), readable at 100+ classes."""
    n = len(class_names)
    matrix = confusion_matrix(y_true, y_pred, labels=np.arange(n), normalize="true" if normalize else None)
    side = float(np.clip(3 + 0.22 * n, 7, 60))
    label_size = float(np.clip(11 - n / 20, 6, 10))
    figure = Figure(figsize=(side + 1.5, side), layout="constrained")
    axes = figure.subplots()
    labels = [_short(name) for name in class_names]
    display = ConfusionMatrixDisplay(matrix, display_labels=labels)
    display.plot(ax=axes, cmap="Blues", include_values=False, xticks_rotation="vertical", colorbar=False)
    if n <= MAX_VALUES_SHOWN:  # the share and, under it, the count: small classes read as what they are
        counts = confusion_matrix(y_true, y_pred, labels=np.arange(n))
        for (i, j), value in np.ndenumerate(matrix):
            if counts[i, j] or i == j:
                text = f"{value:.2f}\n({counts[i, j]})" if normalize else str(counts[i, j])
                axes.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=label_size - 1,
                    color="white" if value > 0.5 * (matrix.max() or 1) else "black",
                )
    colorbar = figure.colorbar(display.im_, ax=axes, shrink=0.6 if n > MAX_VALUES_SHOWN else 0.8, pad=0.02)
    colorbar.ax.tick_params(labelsize=10)
    axes.tick_params(labelsize=label_size)
    if normalize:
        display.im_.set_clim(0, 1)
    axes.set_title(
        f"Confusion matrix ({'share of true class (count)' if normalize else 'counts'}), n={len(y_true)}",
        fontsize=max(label_size + 2, 12),
    )
    axes.xaxis.label.set_fontsize(max(label_size, 11))
    axes.yaxis.label.set_fontsize(max(label_size, 11))
    return _save(figure, path)


def plot_reliability_diagram(proba: np.ndarray, y_true: Sequence[int], path: str | Path, *, n_bins: int = 15) -> Path:
    """Accuracy against confidence per bin (calibrated: on the diagonal), plus a count histogram."""
    confidence, accuracy, count = calibration_bins(proba, np.asarray(y_true), n_bins)
    ece = expected_calibration_error(proba, np.asarray(y_true), n_bins)
    edges = np.linspace(0, 1, n_bins + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, 1 / n_bins
    figure = Figure(figsize=(6, 7), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    filled = count > 0
    top.bar(centres[filled], accuracy[filled], width=width, edgecolor="black", label="accuracy")
    top.scatter(
        centres[filled],
        confidence[filled],
        marker="_",
        s=(260 / n_bins) ** 2,
        linewidths=2.5,
        color="tab:red",
        zorder=3,
        label="mean confidence",
    )
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set(ylim=(0, 1), ylabel="accuracy", title=f"Reliability diagram (ECE {ece:.3f}, n={count.sum()})")
    top.legend(loc="upper left")
    bottom.bar(centres, count, width=width, color="grey", edgecolor="black")
    bottom.set(xlim=(0, 1), xlabel="confidence (top probability)", ylabel="samples")
    return _save(figure, path)


def plot_curve(
    x: Sequence[float],
    y: Sequence[float],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str,
    marker_point: tuple[float, float] | None = None,
) -> Path:
    """A line plot (e.g. accuracy against coverage); ``marker_point`` is highlighted and labelled."""
    figure = Figure(figsize=(6, 4.5), layout="constrained")
    axes = figure.subplots()
    axes.plot(x, y, linewidth=1.5)
    if marker_point is not None:
        px, py = marker_point
        axes.plot([px], [py], "o", color="tab:red", markersize=8)
        axes.annotate(f"({px:.3g}, {py:.3g})", (px, py), textcoords="offset points", xytext=(8, -14))
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_bars(
    labels: Sequence[str],
    means: Sequence[float],
    stds: Sequence[float],
    path: str | Path,
    *,
    xlabel: str,
    title: str,
    highlight: int | None = None,
) -> Path:
    """Horizontal bars with ± std error bars (``highlight``: the bar drawn in another colour, e.g. the
    choice made on val); values are written beside the bars."""
    figure = Figure(figsize=(7, 1.2 + 0.45 * len(labels)), layout="constrained")
    axes = figure.subplots()
    positions = np.arange(len(labels))[::-1]
    colours = ["tab:orange" if i == highlight else "tab:blue" for i in range(len(labels))]
    axes.barh(positions, means, xerr=stds, color=colours, capsize=3)
    for position, mean, std in zip(positions, means, stds, strict=True):
        axes.annotate(
            f"{mean:.3f}" + (f" ± {std:.3f}" if std else ""),
            (mean + std, position),
            textcoords="offset points",
            xytext=(4, -4),
            fontsize=9,
        )
    axes.set_yticks(positions, [_short(label) for label in labels])
    axes.set(xlabel=xlabel, title=title, xlim=(0, max(1.0, max(means, default=0) * 1.15)))
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def _short(name: str) -> str:
    return name if len(name) <= MAX_LABEL_CHARS else name[: MAX_LABEL_CHARS - 1] + "…"


def _save(figure: Figure, path: str | Path) -> Path:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure)
    figure.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.15)
    return atomic_write_bytes(path, buffer.getvalue())
