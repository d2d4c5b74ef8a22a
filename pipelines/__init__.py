"""Orchestration (installed as ``pnoc_pipelines``): one module per DVC stage, the CLI, the
sweeps and MLflow tracking.

Each stage module opens its stage (params as dvc.yaml declares them, its MLflow run), calls its
library step (:mod:`pnoc.steps`) and writes the step's outputs to the paths of
:mod:`pnoc_pipelines.paths`, atomically. Model and loss code lives in ``pnoc``, never here.
"""
