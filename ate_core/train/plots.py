"""The loss curve as a PNG, drawn off-screen (Agg) so training never needs a display."""

from __future__ import annotations

import os
from typing import Optional, Sequence

__all__ = ["plot_loss_curve", "smooth"]


def smooth(values: Sequence[float], window: int) -> list:
    """Trailing moving average over at most ``window`` values (same length as ``values``)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_loss_curve(steps: Sequence[int], losses: Sequence[float], path: str, *,
                    lrs: Optional[Sequence[float]] = None, title: str = "training loss") -> str:
    """Write the loss (log scale, raw and smoothed) and optionally the learning rate to ``path``.

    Uses a bare :class:`~matplotlib.figure.Figure` with the Agg canvas rather than pyplot, so
    no global figure state or GUI backend is involved. Written atomically (temp file, rename).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    steps, losses = list(steps), [float(x) for x in losses]
    positive = all(x > 0 for x in losses) and losses
    if losses:
        window = max(1, len(losses) // 50)
        ax.plot(steps, losses, color="tab:blue", alpha=0.35 if window > 1 else 1.0, linewidth=0.8 if window > 1 else 1.4,
                label="loss")
        if window > 1:
            ax.plot(steps, smooth(losses, window), color="tab:blue", linewidth=1.6,
                    label=f"moving mean ({window})")
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if lrs is not None and len(lrs) == len(steps) and steps:
        ax2 = ax.twinx()
        ax2.plot(steps, list(lrs), color="tab:orange", linewidth=1.0, label="lr")
        ax2.set_ylabel("learning rate", color="tab:orange")
        ax2.tick_params(axis="y", colors="tab:orange")
    if losses:
        ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path
