"""Learning curves of the models one stage trained: loss and validation score per epoch.

The stage's MLflow run shows them twice: as metrics (`<model>.train.loss`, step = epoch, in
the run's chart view) and as curves.png among its artifacts (and DVC's plots).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from cxrdet.io import atomic_path

History = Sequence[Mapping[str, float]]


def plot_curves(histories: Mapping[str, History], monitor: str, path: Path, title: str) -> None:
    """Two panels, one line per model: training loss, and validation `monitor` (the score
    that picked the best epoch, marked) where the model was validated."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (loss, score) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for name, history in histories.items():
        epochs = range(1, len(history) + 1)
        loss.plot(epochs, [row["train_loss"] for row in history], marker=".", label=name)
        values = [row.get(f"val_{monitor}", float("nan")) for row in history]
        line = score.plot(epochs, values, marker=".", label=name)[0]
        scored = [(value, epoch) for epoch, value in zip(epochs, values) if value == value]
        if scored:
            best, epoch = max(scored)
            score.plot([epoch], [best], "o", markersize=9, fillstyle="none", color=line.get_color())
    loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    score.set(xlabel="epoch", ylabel=f"validation {monitor}", title=f"{monitor} (o: best epoch)")
    for axes in (loss, score):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_path(path) as partial:
        figure.savefig(partial, format="png")
    plt.close(figure)
