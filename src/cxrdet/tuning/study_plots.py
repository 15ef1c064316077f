"""An Optuna study's pictures: optimisation history, parameter importances and parallel
coordinates, as one HTML page (plotly) and a PNG each (matplotlib).

The page links plotly.js as a local file beside it (PLOTLY_JS) instead of embedding its
~4.8 MB: the page stays small and opens offline. A plot that cannot be drawn yet (e.g.
importances need 2+ completed trials) is a PNG saying why.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from cxrdet.io import atomic_path

PLOTLY_JS = "plotly.min.js"  # written beside the HTML page, which loads it by this name


def write_study_plots(study: optuna.Study, html_path: Path, png_paths: Mapping[str, Path]) -> None:
    """The study's three plots: `html_path` (with PLOTLY_JS beside it) and `png_paths[kind]`
    for kind in history, importances, parallel."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt
    from optuna import visualization as plotly_plots
    from optuna.visualization import matplotlib as mpl_plots

    # Parallel coordinates of the knobs every trial has: a method's own parameters (view_fusion.*,
    # gating.*) exist in some trials only, and the view switches are many booleans.
    completed = [t.params for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    shared = sorted(set.intersection(*map(set, completed)) if completed else set())
    makers = {
        "history": ("plot_optimization_history", {}),
        "importances": ("plot_param_importances", {}),
        "parallel": (
            "plot_parallel_coordinate",
            {"params": [p for p in shared if "." not in p] or None},
        ),
    }
    sections: list[str] = []
    for kind, (maker, options) in makers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the matplotlib backend is "experimental"
            try:
                figure = getattr(plotly_plots, maker)(study, **options)
                # A fixed element id: the page is a DVC output, the same bytes on every run.
                html = figure.to_html(full_html=False, include_plotlyjs=False, div_id=kind)
                sections.append(html)
            except Exception as error:  # noqa: BLE001 - a plot is a report, never a reason to fail
                sections.append(f"<p>{kind}: not drawn ({error})</p>")
            try:
                axes = getattr(mpl_plots, maker)(study, **options)
                figure = (np.ravel(axes)[0] if isinstance(axes, np.ndarray) else axes).figure
                READABLE.get(kind, lambda _: None)(figure)
            except Exception as error:  # noqa: BLE001
                figure = plt.figure()
                figure.text(0.02, 0.5, f"{kind}: not drawn ({error})", fontsize=8, wrap=True)
            figure.set_size_inches(11, 6)
            figure.tight_layout()
            with atomic_path(png_paths[kind]) as partial:
                figure.savefig(partial, dpi=90, format="png")
            plt.close(figure)
    write_plotly_js(html_path.with_name(PLOTLY_JS))
    with atomic_path(html_path) as partial:
        partial.write_text(
            f"<html><head><meta charset='utf-8'><title>{study.study_name}</title>"
            f"<script src='{PLOTLY_JS}'></script></head><body>"
            f"<h2>{study.study_name}</h2>{''.join(sections)}</body></html>\n"
        )


def write_plotly_js(path: Path) -> None:
    """plotly.js of the installed plotly, rewritten only when it differs (it is large)."""
    from plotly.offline import get_plotlyjs

    script = get_plotlyjs()
    if path.is_file() and path.read_text() == script:
        return
    with atomic_path(path) as partial:
        partial.write_text(script)


def _integer_trials(figure: Any) -> None:
    """History: trial numbers on the x axis are whole numbers."""
    from matplotlib.ticker import MaxNLocator

    for axes in figure.axes:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def _readable_parallel(figure: Any) -> None:
    """Parallel coordinates: Optuna colours trials on a white-to-blue scale (its worst trials
    vanish into the background) and prints each knob's ticks over the lines. A scale dark at
    both ends, thicker lines, tick labels on a light backing, axis names turned to fit."""
    for axes in figure.axes:
        for collection in axes.collections:
            collection.set_cmap("viridis")
            collection.set_linewidth(1.8)
            collection.set_alpha(0.85)
            if getattr(collection, "colorbar", None) is not None:
                collection.colorbar.update_normal(collection)
        axes.tick_params(labelsize=7)
        for label in axes.get_yticklabels():
            label.set_bbox({"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1})
        for label in axes.get_xticklabels():
            label.set_rotation(20)
            label.set_horizontalalignment("right")


READABLE = {"history": _integer_trials, "parallel": _readable_parallel}
