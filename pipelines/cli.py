"""The ``pnoc`` command: run the pipeline with one MLflow parent run, and the tools around it."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


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


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _fmt(value: object) -> str:
    return f"{100 * value:.1f}" if isinstance(value, int | float) else "-"


def summary_table(root: Path = Path(".")) -> str:
    """The pipeline's headline figures: CAMs, saliency, pseudo-masks, DeepLab, registry."""
    from pnoc_pipelines import paths

    cams = _read_json(root / paths.CAMS_METRICS)
    sal = _read_json(root / paths.SALIENCY_METRICS)
    pm = _read_json(root / paths.PSEUDO_MASKS_METRICS)
    seg = _read_json(root / paths.SEGMENTATION_METRICS)
    reg = _read_json(root / paths.REGISTRY_REPORT)
    split = pm.get("split", "train")
    rows = [
        (
            "CAM mIoU (train / val)",
            f"{_fmt(cams.get('train', {}).get('miou'))} / {_fmt(cams.get('val', {}).get('miou'))}",
        ),
        ("saliency mIoU (val)", _fmt(sal.get("miou"))),
        (f"pseudo-mask mIoU ({split})", _fmt(pm.get("miou"))),
        ("DeepLabV3+ mIoU (val)", _fmt(seg.get("miou"))),
    ]
    if reg:
        champion = "yes" if reg.get("promoted") else f"no (champion is v{reg.get('champion')})"
        rows.append(("registered", f"{reg.get('model_name')} v{reg.get('version')}"))
        rows.append(("became @champion", champion))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


@app.command()
def repro(
    targets: Annotated[list[str] | None, typer.Argument(help="stages to reproduce")] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="rerun even if unchanged")] = False,
) -> None:
    """Run `dvc repro` as one pipeline execution: a parent MLflow run with a child per stage."""
    from mlflow.tracking import MlflowClient

    from pnoc.config import flatten
    from pnoc_pipelines import tracking
    from pnoc_pipelines.common import load_params, venv_env

    params = load_params()  # fail on bad params before anything starts
    experiment_id = tracking.configure()
    key = f"repro-{uuid.uuid4().hex[:12]}"
    parent = tracking.find_or_create_pipeline_run(
        key, experiment_id, run_name="dvc repro", params=flatten(params)
    )
    env = venv_env() | {tracking.PIPELINE_ENV: key}
    cmd = [sys.executable, "-m", "dvc", "repro", *(["--force"] if force else []), *(targets or [])]
    code = subprocess.call(cmd, env=env)
    MlflowClient().set_terminated(parent, status="FINISHED" if code == 0 else "FAILED")
    if code != 0:
        raise typer.Exit(code)
    typer.echo("\nMetrics:\n" + _metrics_table())
    typer.echo("\nSummary (mIoU in %):\n" + summary_table())
    typer.echo(
        f"\nMLflow: start the UI with `{Path(sys.executable).parent / 'mlflow'} ui "
        f"--backend-store-uri {tracking.tracking_uri()}`, then open this run at\n"
        f"  http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{parent}"
    )


@app.command("ablate-cams")
def ablate_cams_cmd(
    methods: Annotated[list[str] | None, typer.Option("--method", "-m")] = None,
    seeds: Annotated[list[int] | None, typer.Option("--seed", "-s")] = None,
    params: Path = Path("params.yaml"),
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", "-S", help="KEY=VALUE params override, e.g. cam.output_stride=8"),
    ] = None,
) -> None:
    """Train vanilla, P-OC and P-NOC generators on the same data and print their CAM mIoU."""
    from pnoc_pipelines.ablate import format_table, run

    report = run(methods or ["vanilla", "poc", "pnoc"], seeds or [0, 1], params, settings)
    typer.echo(format_table(report))


@app.command()
def robustness(
    methods: Annotated[list[str] | None, typer.Option("--method", "-m")] = None,
    seeds: Annotated[list[int] | None, typer.Option("--seed", "-s")] = None,
    datasets: Annotated[
        Path | None,
        typer.Option(
            help="generated data sets: name -> generator params [pipelines/robustness.yaml]"
        ),
    ] = None,
    refine: Annotated[
        str,
        typer.Option(help="the method whose CAMs go on to pseudo-masks ('none': no refinement)"),
    ] = "pnoc",
    params: Path = Path("params.yaml"),
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", "-S", help="KEY=VALUE params override for every data set"),
    ] = None,
) -> None:
    """The ablation (vanilla, P-OC, P-NOC) on several generated data sets and seeds, with the
    pseudo-mask gain: a table per data set and overall (reports/robustness.md, MLflow)."""
    from pnoc_pipelines.robustness import format_table, run

    report = run(
        methods or ["vanilla", "poc", "pnoc"],
        seeds or [0, 1],
        params,
        datasets,
        settings,
        refine=None if refine == "none" else refine,
    )
    typer.echo(format_table(report))


@app.command()
def seeds(
    seeds: Annotated[list[int] | None, typer.Option("--seed", "-s")] = None,
    compare: Annotated[
        list[str] | None,
        typer.Option(help="other CAM methods trained per seed from its OC, e.g. vanilla, poc"),
    ] = None,
    params: Path = Path("params.yaml"),
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", "-S", help="KEY=VALUE params override for every seed"),
    ] = None,
) -> None:
    """The whole chain (dvc repro up to evaluate) for each seed in runs/seeds/seed-N/, and every
    stage's metric as mean ± std (reports/seeds.md, MLflow); nothing is registered."""
    from pnoc_pipelines.seeds import format_table, run

    report = run(seeds if seeds is not None else [0, 1, 2], params, compare, settings)
    typer.echo(format_table(report))


@app.command()
def estimate(
    params: Path = Path("params.yaml"),
    probe_batch: Annotated[
        int,
        typer.Option(help="largest training batch probed (a larger one times more exactly)"),
    ] = 4,
    images: Annotated[
        list[str] | None,
        typer.Option(
            "--images", help="SPLIT=N: scale to N images of SPLIT instead of the dataset's count"
        ),
    ] = None,
) -> None:
    """Expected time and peak memory of every stage for the current params, from a short timed
    probe of each stage at its real resolution on this machine (table also in MLflow)."""
    from pnoc_pipelines.estimate import run

    _, table = run(params, batch=probe_batch, counts=images)
    typer.echo(table)


def _project_store() -> str:
    """The tracking URI for commands that read a registered model: a SQLite store that does not
    exist is an error (run outside the project, it would be created empty)."""
    from pnoc.errors import PnocError
    from pnoc_pipelines import tracking
    from pnoc_pipelines.store import sqlite_path

    uri = tracking.tracking_uri()
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise PnocError(
            f"{db}: no MLflow store here; run from the project folder (the one with dvc.yaml, "
            "after `make run`) or set MLFLOW_TRACKING_URI"
        )
    return uri


def _default_model() -> str:
    from pnoc_pipelines.common import load_params

    return f"models:/{load_params().register.model_name}@champion"


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="PNG/JPEG images")],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="model URI [default: the registered champion]"),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("predictions"),
    alpha: Annotated[float, typer.Option(help="mask opacity in the overlay")] = 0.5,
) -> None:
    """Segment images with a registered model: <stem>_mask.png (VOC palette) and
    <stem>_overlay.png per image."""
    import mlflow
    import numpy as np
    import pandas as pd
    from PIL import Image

    from pnoc.data.files import read_image, write_mask_png
    from pnoc.errors import PnocError
    from pnoc.io import atomic_path
    from pnoc.viz import colorize
    from pnoc_pipelines.serving import load_verified

    for path in images:
        if not path.is_file():
            raise PnocError(f"{path}: image file not found")
    stems = [p.stem for p in images]
    if len(set(stems)) != len(stems):
        raise PnocError(f"two images share a file name stem; outputs would collide: {stems}")
    model = model or _default_model()
    mlflow.set_tracking_uri(_project_store())
    with load_verified(model) as pyfunc:
        names = pyfunc.get_raw_model().class_names
        for path in images:
            image = read_image(path)
            try:
                pred = pyfunc.predict(pd.DataFrame({"image": [image]}))
            except mlflow.exceptions.MlflowException as exc:
                raise PnocError(f"{path}: {exc.message}") from None
            mask = np.asarray(pred["mask"][0], dtype=np.uint8)
            write_mask_png(out / f"{path.stem}_mask.png", mask)
            blend = (1 - alpha) * image.astype(np.float32)
            blend += alpha * colorize(mask).astype(np.float32)
            with atomic_path(out / f"{path.stem}_overlay.png") as tmp:
                Image.fromarray(blend.round().clip(0, 255).astype(np.uint8)).save(tmp, format="PNG")
            found = [names[i] if names else str(i) for i in np.unique(mask).tolist()]
            typer.echo(f"{path}: {out / (path.stem + '_mask.png')}, classes {', '.join(found)}")


@app.command()
def serve(
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="model URI [default: the registered champion]"),
    ] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 5001,
    workers: Annotated[int, typer.Option(help="server processes")] = 1,
    max_side: Annotated[
        int | None, typer.Option(help="longest side the network sees (larger images are scaled)")
    ] = None,
    max_pixels: Annotated[int | None, typer.Option(help="largest image, in pixels")] = None,
    max_request_pixels: Annotated[
        int | None, typer.Option(help="most pixels over all images of a request")
    ] = None,
    max_body_bytes: Annotated[int | None, typer.Option(help="largest request body")] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(help="requests processed at once (others wait)")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="seconds a request may take")] = None,
) -> None:
    """Serve a registered segmenter over HTTP (MLflow's scoring protocol) after checking that
    its checkpoint is the one registered; bounded per request (docs/serving.md)."""
    import dataclasses

    import mlflow

    from pnoc.serving import ServingLimits
    from pnoc_pipelines.serving import serve as run_server

    given = {
        "max_side": max_side,
        "max_pixels": max_pixels,
        "max_request_pixels": max_request_pixels,
        "max_body_bytes": max_body_bytes,
        "max_concurrent": max_concurrent,
        "timeout_s": timeout,
    }
    limits = dataclasses.replace(
        ServingLimits.from_env(), **{k: v for k, v in given.items() if v is not None}
    )
    mlflow.set_tracking_uri(_project_store())
    run_server(model or _default_model(), host=host, port=port, workers=workers, limits=limits)


@app.command()
def overview(
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write")] = Path(
        "plots/overview.png"
    ),
    count: Annotated[int, typer.Option(help="images (rows)")] = 4,
) -> None:
    """One picture of a finished run: image | CAM | saliency | pseudo-mask | prediction."""
    from pnoc_pipelines.overview import run

    typer.echo(f"wrote {run(out, count)}")


@app.command("check-params")
def check_params(path: Path = Path("params.yaml")) -> None:
    """Validate a params file and print it back with defaults filled in."""
    from pnoc_pipelines.common import load_params

    typer.echo(load_params(path).model_dump_json(indent=2))


from pnoc_pipelines.dev import dev_app  # noqa: E402  (`pnoc dev s3`: local S3 for DVC and MLflow)

app.add_typer(dev_app, name="dev")

from pnoc_pipelines.sweep import app as sweep_app  # noqa: E402  (`pnoc sweep saliency|adversarial`)

app.add_typer(sweep_app, name="sweep")


recipe_app = typer.Typer(
    no_args_is_help=True,
    help="Named param sets (pipelines/recipes/): the authors' VOC 2012 and COCO 2014 settings.",
)
app.add_typer(recipe_app, name="recipe")


@recipe_app.command("list")
def recipe_list() -> None:
    """The recipes, one per line with its description."""
    from pnoc_pipelines import recipe

    for name in recipe.available():
        typer.echo(f"{name:<16} {recipe.load(name).description}")


@recipe_app.command("show")
def recipe_show(name: str) -> None:
    """The params a recipe sets, one dotted key per line."""
    from pnoc_pipelines import recipe

    for key, value in recipe.load(name).values.items():
        typer.echo(f"{key}: {json.dumps(value)}")


@recipe_app.command("apply")
def recipe_apply(
    name: str,
    params: Annotated[Path, typer.Option(help="the params file to edit")] = Path("params.yaml"),
) -> None:
    """Write a recipe into params.yaml (comments and every other key kept); `dvc params diff`
    then shows what it changed."""
    from pnoc_pipelines import recipe

    changes = recipe.apply(name, params)
    for line in changes:
        typer.echo(f"  {line}")
    typer.echo(f"recipe {name}: {len(changes)} key(s) changed in {params}")


@recipe_app.command("args")
def recipe_args(name: str) -> None:
    """A recipe as `-S key=value` options: dvc exp run $(pnoc recipe args NAME)."""
    from pnoc_pipelines import recipe

    typer.echo(" ".join(recipe.set_args(name)))


def main() -> None:
    from pnoc.errors import PnocError

    try:
        app()
    except PnocError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
