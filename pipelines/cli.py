"""The ``pnoc`` command: run the pipeline with one MLflow parent run, and the tools around it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _env_with_venv() -> dict[str, str]:
    """Stage commands call ``python``/``dvc``: make them this interpreter's."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _metrics_table() -> str:
    """One line per metric file: the figures `dvc metrics show` would print, flattened."""
    rows = []
    for path in sorted(Path("metrics").glob("*.json")):
        data = json.loads(path.read_text())
        flat = {k: v for k, v in data.items() if isinstance(v, int | float)}
        for split in ("train", "val"):
            if isinstance(data.get(split), dict):
                flat.update(
                    {
                        f"{split}.{k}": v
                        for k, v in data[split].items()
                        if isinstance(v, int | float)
                    }
                )
        rows.append(f"  {path}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(flat.items())))
    return "\n".join(rows) or "  (no metrics yet)"


@app.command()
def repro(
    targets: Annotated[list[str] | None, typer.Argument(help="stages to reproduce")] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="rerun even if unchanged")] = False,
) -> None:
    """Run `dvc repro` as one pipeline execution: a parent MLflow run with a child per stage."""
    from mlflow.tracking import MlflowClient

    from pipelines import tracking
    from pipelines.common import load_params

    load_params()  # fail on bad params before anything starts
    experiment_id = tracking.configure()
    key = f"repro-{uuid.uuid4().hex[:12]}"
    parent = tracking.find_or_create_pipeline_run(key, experiment_id, run_name="dvc repro")
    env = _env_with_venv() | {tracking.PIPELINE_ENV: key}
    cmd = [sys.executable, "-m", "dvc", "repro", *(["--force"] if force else []), *(targets or [])]
    code = subprocess.call(cmd, env=env)
    MlflowClient().set_terminated(parent, status="FINISHED" if code == 0 else "FAILED")
    if code != 0:
        raise typer.Exit(code)
    typer.echo("\nMetrics:\n" + _metrics_table())
    typer.echo(
        f"\nMLflow: run `{Path(sys.executable).parent / 'mlflow'} ui "
        f"--backend-store-uri {tracking.tracking_uri()}` and open http://127.0.0.1:5000 "
        f"(pipeline run {parent})"
    )


@app.command("ablate-cams")
def ablate_cams_cmd(
    methods: Annotated[list[str] | None, typer.Option("--method", "-m")] = None,
    seeds: Annotated[list[int] | None, typer.Option("--seed", "-s")] = None,
    params: Path = Path("params.yaml"),
) -> None:
    """Train vanilla, P-OC and P-NOC generators on the same data and print their CAM mIoU."""
    from pipelines.ablate import format_table, run

    report = run(methods or ["vanilla", "poc", "pnoc"], seeds or [0, 1], params)
    typer.echo(format_table(report))


@app.command("check-params")
def check_params(path: Path = Path("params.yaml")) -> None:
    """Validate a params file and print it back with defaults filled in."""
    from pipelines.common import load_params

    typer.echo(load_params(path).model_dump_json(indent=2))


def main() -> None:
    from pnoc.errors import PnocError

    try:
        app()
    except PnocError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
