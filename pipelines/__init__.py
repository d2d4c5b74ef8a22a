"""Orchestration: one module per DVC stage, the CLI and MLflow tracking.

Each stage reads its params section, opens its MLflow run, calls the library and writes its
outputs atomically. Model and loss code lives in ``pnoc``, never here.
"""
