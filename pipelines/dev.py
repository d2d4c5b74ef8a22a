"""``pnoc dev``: local services for development, on loopback.

``pnoc dev s3`` runs a SeaweedFS S3 server (:mod:`pnoc_pipelines.s3_server`) in the foreground,
with buckets and credentials kept in its data folder, and prints how DVC and MLflow use it.
"""

from __future__ import annotations

import secrets
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from pnoc_pipelines.s3_server import (
    IDENTITY_FILE,
    S3Server,
    S3ServerError,
    read_identity_config,
)

DEFAULT_BUCKETS = ("pnoc-dvc", "pnoc-mlflow")
DEFAULT_DIR = Path(".pnoc/s3")


def setup_text(server: S3Server, buckets: list[str]) -> str:
    """The env vars to export and the DVC / MLflow commands that use this server."""
    dvc_bucket = buckets[0] if buckets else DEFAULT_BUCKETS[0]
    mlflow_bucket = buckets[1] if len(buckets) > 1 else DEFAULT_BUCKETS[1]
    exports = "\n".join(f"export {k}={v}" for k, v in sorted(server.env().items()))
    lines = [
        f"SeaweedFS S3 on {server.endpoint} (data in {server.data_dir}, log {server.log_path})",
        f"buckets: {', '.join(buckets) or '(none)'}",
        "",
        "# in the shells that use it:",
        exports,
        "",
        "# DVC remote (credentials stay out of git: the env vars above, or --local):",
        f"dvc remote add -d storage s3://{dvc_bucket}/store",
        f"dvc remote modify storage endpointurl {server.endpoint}",
    ]
    if server.access_key:
        lines += [
            f"dvc remote modify --local storage access_key_id {server.access_key}",
            f"dvc remote modify --local storage secret_access_key {server.secret_key}",
        ]
    lines += [
        "",
        "# MLflow server storing artifacts in the bucket (with the env vars above):",
        "mlflow server --backend-store-uri sqlite:///mlflow-server.db "
        f"--artifacts-destination s3://{mlflow_bucket}/artifacts --host 127.0.0.1 --port 5000",
        "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000",
        "",
        "Ctrl-C stops the server.",
    ]
    return "\n".join(lines)


dev_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Local services for development (loopback)."
)


@dev_app.command("s3")
def s3_cmd(
    data_dir: Annotated[Path, typer.Option("--dir", help="data folder (kept between runs)")] = (
        DEFAULT_DIR
    ),
    port: Annotated[int, typer.Option(help="S3 port on 127.0.0.1 (0: a free one)")] = 8333,
    buckets: Annotated[
        list[str] | None, typer.Option("--bucket", help="bucket to create (repeat)")
    ] = None,
    access_key: Annotated[str | None, typer.Option(help="default: kept in DIR/s3.json")] = None,
    secret_key: Annotated[str | None, typer.Option(help="default: kept in DIR/s3.json")] = None,
) -> None:
    """Run a SeaweedFS S3 server on 127.0.0.1 in the foreground, with buckets and credentials."""
    names = list(buckets or DEFAULT_BUCKETS)
    if not (access_key and secret_key):
        saved = read_identity_config(data_dir / IDENTITY_FILE)
        access_key, secret_key = saved or (f"pnoc{secrets.token_hex(4)}", secrets.token_hex(16))

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    # Ctrl-C stops the server even when the CLI was started with SIGINT ignored (a shell
    # without job control ignores it in background commands, and Python keeps that)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    server = S3Server(data_dir, port, access_key, secret_key)
    try:
        try:
            server.start()
            server.create_buckets(names)
        except S3ServerError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(setup_text(server, names), nl=True)
        sys.stdout.flush()
        assert server.process is not None
        code = server.process.wait()
        typer.echo(f"weed server exited with {code}; see {server.log_path}", err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        typer.echo("stopping the S3 server (up to 20 s)", err=True)
    finally:
        server.stop()
