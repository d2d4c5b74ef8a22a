"""Plots of a sweep's Optuna study (``optuna.visualization.matplotlib``), as PNGs in ``plots/``:

* ``history.png``: each trial's objective and the best so far;
* ``objective.png``: the objective against each searched parameter (a slice plot);
* ``parallel_coordinate.png``: every trial's parameters and objective, one line per trial;
* ``importances.png``: how much each parameter explains the objective (from 2 trials on).

Matplotlib rather than plotly: PNG export from plotly needs kaleido, which is not installed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from pnoc.io import atomic_path


def _save(draw: Callable[[], Any], path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"optuna\.")  # 1 trial
        axes = draw()
    fig = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
    for ax in fig.axes:  # log axes: major ticks only, minor labels overlap
        if ax.get_xscale() == "log":
            ax.xaxis.set_minor_formatter(NullFormatter())
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def write_plots(study: optuna.Study, metric: str, folder: Path) -> list[Path]:
    """The plots above for the study's completed trials; none when no trial completed."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as vis

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    plots = {
        "history.png": lambda: vis.plot_optimization_history(study, target_name=metric),
        "objective.png": lambda: vis.plot_slice(study, target_name=metric),
        "parallel_coordinate.png": lambda: vis.plot_parallel_coordinate(study, target_name=metric),
    }
    if len(done) >= 2:
        plots["importances.png"] = lambda: vis.plot_param_importances(study, target_name=metric)
    return [_save(draw, folder / name) for name, draw in plots.items()]
