"""Ray for a sweep (and for a stage under ``base.launcher: ray``): the cluster address,
starting or joining Ray, resources per trial."""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Iterator

from pnoc.errors import ConfigError
from pnoc.tune import Sweep

ADDRESS_TIMEOUT_S = 3.0


def resolve_address(address: str | None) -> str | None:
    """``--address``, else ``RAY_ADDRESS``; None for a local Ray. A ``host:port`` that does not
    accept a connection within a few seconds is a ConfigError (before any trial)."""
    address = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    if address in ("", "local"):
        return None
    if address == "auto":
        return address
    hostport = re.sub(r"^[a-z]+://", "", address)
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"Ray address '{address}': expected host:port (or 'auto')")
    try:
        with socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConfigError(
            f"Ray cluster at {address} does not answer ({exc}); start it with "
            "`ray start --head --port <port>` or drop --address / RAY_ADDRESS to run locally"
        ) from None
    return address


def start_ray(address: str | None) -> bool:
    """Connect to (or start) Ray; True when this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    try:
        if address is None:  # "local": a fresh Ray, not whatever `ray start` left running
            ray.init(
                address="local",
                num_cpus=os.cpu_count() or 1,
                include_dashboard=False,
                log_to_driver=True,
            )
        else:
            ray.init(address=address, log_to_driver=True)
    except ConnectionError as exc:
        raise ConfigError(
            f"cannot connect to Ray at {address}: {exc}. A cluster with token authentication "
            "(Ray's default) needs RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN or "
            "~/.ray/auth_token"
        ) from None
    return True


def _check_resources(sweep: Sweep, remote: bool) -> None:
    import ray

    have = ray.cluster_resources()
    need = sweep.settings.resources
    short = [
        f"{k} {n:g} > {have.get(k.upper(), 0):g}"
        for k, n in (("cpu", need.cpu), ("gpu", need.gpu))
        if n > have.get(k.upper(), 0)
    ]
    if short and not remote:
        raise ConfigError(
            f"resources per trial exceed this machine ({', '.join(short)}): lower "
            f"{sweep.kind}.resources in the sweep config"
        )
    if short:
        print(f"warning: the cluster has fewer resources than one trial needs: {short}")


@contextlib.contextmanager
def ray_session(sweep: Sweep, address: str | None) -> Iterator[None]:
    """Start or join Ray and check that one trial fits; shut down only a Ray started here."""
    import ray

    started = start_ray(address)
    try:
        _check_resources(sweep, address is not None)
        yield
    finally:
        if started:
            ray.shutdown()
