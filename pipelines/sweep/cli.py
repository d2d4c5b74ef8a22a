"""``pnoc sweep saliency|adversarial``: the typer commands and their report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pnoc_pipelines.paths import PARAMS_FILE as PARAMS
from pnoc_pipelines.paths import SWEEP_CONFIG

if TYPE_CHECKING:
    from pnoc_pipelines.sweep.driver import SweepOutcome

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Hyperparameter sweeps (Ray Tune + Optuna TPE + ASHA); see pipelines/sweep.yaml.",
)

NumSamples = Annotated[
    int | None, typer.Option("--num-samples", "-n", help="trials in all (default: config)")
]
MaxConcurrent = Annotated[
    int | None, typer.Option("--max-concurrent", "-c", help="trials at once (default: config)")
]
Address = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster host:port (default: RAY_ADDRESS, else local)"),
]
ConfigOpt = Annotated[Path, typer.Option("--config", help="sweep settings")]
Apply = Annotated[bool, typer.Option("--apply", help="write the winners into params.yaml")]
Name = Annotated[
    str | None, typer.Option("--name", help="sweep name: sweeps/<name>/ (default: the kind)")
]
ParamsOpt = Annotated[Path, typer.Option("--params", help="params file")]


def format_outcome(outcome: SweepOutcome, top: int = 5) -> str:
    """A short report: trial counts, the best trials, where the results are."""
    from pnoc_pipelines.sweep.results import STATUSES, clean

    recs, metric = outcome.records, outcome.metric
    counts = [(s, sum(r.status == s for r in recs)) for s in STATUSES]
    lines = [
        f"sweep {outcome.name}: {len(recs)} trial(s): "
        + ", ".join(f"{n} {s}" for s, n in counts if n)
    ]
    scored = sorted(
        (r for r in recs if r.value(metric) is not None),
        key=lambda r: r.value(metric) or 0.0,
        reverse=outcome.mode == "max",
    )
    for r in scored[:top]:
        params = ", ".join(f"{k}={clean(v)}" for k, v in r.config.items())
        lines.append(f"  trial {r.number:3d} {metric}={r.value(metric):.4f}  {params}")
    if outcome.best is not None:
        lines.append(f"best: {outcome.paths.best}")
    lines.append(f"trials: {outcome.paths.trials}")
    if outcome.interrupted:
        lines.append("interrupted: run the same command again to resume")
    lines += [f"applied to params.yaml: {change}" for change in outcome.applied]
    return "\n".join(lines)


def _command(kind: str, doc: str) -> Any:
    def command(
        num_samples: NumSamples = None,
        max_concurrent: MaxConcurrent = None,
        address: Address = None,
        config: ConfigOpt = SWEEP_CONFIG,
        apply: Apply = False,
        name: Name = None,
        params: ParamsOpt = PARAMS,
    ) -> None:
        from pnoc_pipelines.sweep.driver import run_sweep

        outcome = run_sweep(
            kind,
            config=config,
            params_file=params,
            name=name,
            num_samples=num_samples,
            max_concurrent=max_concurrent,
            address=address,
            apply=apply,
        )
        typer.echo(format_outcome(outcome))
        if outcome.interrupted:
            raise typer.Exit(130)

    command.__doc__ = doc
    return command


app.command("saliency")(
    _command("saliency", "Search C²AM-H's δfg, λh (and more) for the best pseudo-mask proxy.")
)
app.command("adversarial")(
    _command(
        "adversarial",
        "Search the CAM generator's P-NOC knobs (ow, mask threshold, …) for the best CAM mIoU.",
    )
)
