"""``pnoc sweep saliency|adversarial``: hyperparameter sweeps with Ray Tune + Optuna (TPE) + ASHA.

Settings come from ``pipelines/sweep.yaml`` (search space, objective, metric, epochs per trial,
samples, concurrency, per-trial resources, ASHA, TPE seed) and are validated with params.yaml
before Ray starts (:func:`pnoc.tune.load_sweep`). A trial applies its values to params.yaml
(plus the sweep's overrides and shortened epochs), trains and reports its metrics after every
epoch; ASHA stops weak trials at its rungs.

Everything of sweep ``<name>`` lives in ``sweeps/<name>/``: ``ray/seg-*`` (its Ray Tune
experiments), ``optuna.db`` (the Optuna study TPE samples from, with the sweep's settings),
``trials.csv``, ``best.yaml``, ``sweep.json`` and ``plots/``. How a run resumes or grows a sweep:
:mod:`pnoc_pipelines.sweep.driver`; its MLflow runs: :mod:`pnoc_pipelines.sweep.runs`.

Modules: ``cli`` (the commands), ``driver``, ``trial`` (the Ray trainable), ``study`` (Optuna),
``cluster`` (Ray), ``results``, ``plots``, ``runs`` and ``retries`` (MLflow), ``apply``
(``--apply``), ``paths``.
"""

from pnoc_pipelines.sweep.cli import app

__all__ = ["app"]
