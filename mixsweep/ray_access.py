"""ray.init for a launch: who may reach the sweep's Ray, and how it joins a Ray cluster.

With tune.py, the only module that imports ray (tune.py runs Tune; this module
starts or joins Ray, and waits for the nodes of the sbatch job's cluster).

A local launch starts a private Ray: it listens on loopback only, and its auth
token is fresh per launch and lives in the environment of the launch and its
Ray processes only (never in ~/.ray/auth_token, which Ray 2.60 writes 0644).
The sbatch job does the same across its nodes (templates/ray_cluster.sh).

Joining a cluster (``--ray-address``) is bounded: a TCP probe of its GCS port
first (an unreachable address otherwise makes Ray retry for many minutes), then
one GCS client with a timeout, as ray.init makes it (a port where nothing speaks
Ray's gRPC costs ray.init 40 s a try, 20 tries), then ray.init with its own
connect loop cut to a few tries. A cluster with token auth is
joined the way Ray finds its token (RAY_AUTH_TOKEN, else the file named by
RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token; see
https://docs.ray.io/en/latest/ray-security/token-auth.html): Ray 2.60 reads it
only for ``address="auto"``, so for an explicit address launch turns token mode
on whenever a token is there. A missing or wrong token is one line.

Errors are ClusterError (a SpecError: the CLI prints one line, exit 2).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import ray
from ray._private import ray_constants

from mixsweep import stop
from mixsweep.spec_errors import SpecError

PROBE_SECONDS = 5.0  # a GCS on a reachable host answers a TCP connect in milliseconds
GCS_PROBE_MS = 5000  # one GCS client, as ray.init makes: at most ~15 s where nothing speaks gRPC
CONNECT_TRIES = 5  # Ray's connect loop: about one second per try (20 by default)

_CLUSTERS = ray_constants.ENABLE_RAY_CLUSTER  # Ray's own choice (before a local launch's)

TOKEN_HELP = ("set RAY_AUTH_TOKEN to the cluster's token (or RAY_AUTH_TOKEN_PATH to a file "
              "holding it, or put it in ~/.ray/auth_token); `ray get-auth-token` on the head "
              "node prints it")


class ClusterError(SpecError):
    """The Ray cluster of --ray-address cannot be joined (reported as one line, exit 2)."""

    def __init__(self, message: str):
        super().__init__([message])


def split_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a ``host:port`` (or ``[v6]:port``) address; None for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or "://" in address:
        return None
    return host.strip("[]"), int(port)


def probe(host: str, port: int, timeout: float = PROBE_SECONDS) -> str | None:
    """Why nothing accepts a TCP connection at host:port within ``timeout`` s; None if it does."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as err:
        return err.strerror or str(err) or type(err).__name__


def unreachable(address: str, given: str, why: str) -> str:
    """The one line for a Ray address nothing answers at."""
    hint = f" (--ray-address {given})" if given != address else ""
    return (f"cannot reach a Ray cluster at {address}{hint}: {why}; check that its head runs "
            "(`ray status` there), that host and port are the GCS address `ray start --head` "
            "printed, and that no firewall is in between")


def token_source(env: Mapping[str, str], home: Path | None = None) -> str | None:
    """Where Ray would read a token from (Ray's order), or None when there is no token."""
    if env.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if env.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH ({env['RAY_AUTH_TOKEN_PATH']})"
    default = (home or Path.home()) / ".ray" / "auth_token"
    return f"{default}" if default.is_file() else None


def token_path_problem(env: Mapping[str, str]) -> str | None:
    """RAY_AUTH_TOKEN_PATH set to a file that cannot be read or is empty: Ray would abort."""
    path = env.get("RAY_AUTH_TOKEN_PATH")
    if not path or env.get("RAY_AUTH_TOKEN"):
        return None
    try:
        ok = bool(Path(path).expanduser().read_text().strip())
        why = "is empty"
    except OSError as err:
        ok, why = False, f"cannot be read ({err.strerror or type(err).__name__})"
    return None if ok else f"RAY_AUTH_TOKEN_PATH names {path}, which {why}; {TOKEN_HELP}"


def join_env(env: Mapping[str, str], home: Path | None = None) -> dict[str, str]:
    """Settings for joining a cluster: token mode when a token is at hand and the mode is unset."""
    if "RAY_AUTH_MODE" not in env and token_source(env, home):
        return {"RAY_AUTH_MODE": "token"}
    return {}


def join_failure(address: str, err_text: str, source: str | None) -> str:
    """The one line for a failed join (``err_text``: Ray's error and its cause, as text)."""
    if "InvalidAuthToken" in err_text or "no authentication token was found" in err_text:
        if source is None:
            return f"the Ray cluster at {address} requires an auth token and none is set here: {TOKEN_HELP}"
        return f"the Ray cluster at {address} refused the auth token from {source}: {TOKEN_HELP}"
    last = next((ln.strip() for ln in reversed(err_text.splitlines()) if ln.strip()), "")
    return (f"could not join a Ray cluster at {address}: {last[:300]}; check that a Ray head "
            "of the same Ray version runs there (`ray status` there) and that the address is "
            "the GCS address `ray start --head` printed")


def local_env() -> dict[str, str]:
    """Settings for a private local Ray: token auth with a fresh token, loopback only.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is Ray's single-machine mode (its default on
    macOS and Windows): the node address is 127.0.0.1, and Ray's GCS, raylet, workers
    and agents then bind loopback instead of every interface.
    """
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def apply(settings: Mapping[str, str]) -> None:
    """Put settings into this process's environment (Ray's children inherit it)."""
    os.environ.update(settings)


# --------------------------------------------------------------------------- ray.init


def init_ray(address: str | None, num_cpus: float | None = None,
             num_gpus: float | None = None) -> str | None:
    """ray.init: a private local Ray, or joining the cluster at ``address`` in bounded time.

    Local: loopback only, token auth with a fresh token in the environment (never in a
    file), ``num_cpus`` / ``num_gpus`` (default: all of this machine's). Joining: the
    GCS port is probed first, Ray's connect loop is cut to a few tries, and a token at
    hand is used; a failure raises ClusterError (one line).
    Returns the GCS address joined (None when local). A TERM during it is a stop
    request, not an exit.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Tune's new console output prints its tables (and TensorBoard hints) even at
    # verbose=0; launch shows its own progress
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    if ray.is_initialized():
        return None
    gcs, source = (_join_settings(address) if address else (None, None))
    if not address:
        _local_settings()
    # include_dashboard=False: no dashboard UI and no HTTP port; Ray still starts its
    # minimal API process (it binds no port: tests/test_reliability.py checks).
    # address="local": a new Ray even when RAY_ADDRESS or a `ray start` cluster is about
    kwargs: dict[str, Any] = ({"address": address} if address else
                              {"address": "local", "num_cpus": num_cpus, "num_gpus": num_gpus,
                               "dashboard_host": "127.0.0.1"})
    try:  # ray.init replaces the TERM handler with sys.exit(SIGTERM) while it connects
        with _bounded_connect(bool(address)):
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
    except SystemExit as err:
        if err.code != signal.SIGTERM:
            raise
        stop.request()
    except (ConnectionError, RuntimeError, ray.exceptions.RayError) as err:
        if not address:
            raise
        ray.shutdown()
        text = f"{err}\n{err.__cause__ or ''}"
        raise ClusterError(join_failure(str(gcs), text, source)) from None
    finally:
        stop.install()
    return gcs


def _refresh_auth() -> None:
    """Ray reads RAY_AUTH_MODE and the token when it is imported: read them again (what Ray
    itself does when it turns token auth on for ``ray start``)."""
    # ray/_raylet.pyi (the compiled module's stub) names neither
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


_BEFORE_LOCAL: dict[str, str | None] = {}  # what a local launch's settings replaced


def _local_settings() -> None:
    settings = local_env()
    for key in settings:
        _BEFORE_LOCAL.setdefault(key, os.environ.get(key))
    apply(settings)
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import; the env var tells Ray's children
    _refresh_auth()


def forget_local_settings() -> None:
    """Undo a local launch's settings once its Ray is shut down: a later SLURM submission
    from the same process (the Python API) must not pass single-machine mode or the
    throw-away token to the job, and a later join must not inherit them."""
    if not _BEFORE_LOCAL:
        return
    for key, value in _BEFORE_LOCAL.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _BEFORE_LOCAL.clear()
    ray_constants.ENABLE_RAY_CLUSTER = _CLUSTERS
    _refresh_auth()


def _join_settings(address: str) -> tuple[str, str | None]:
    """Resolve ``address`` as ray.init will, probe its GCS port, and turn token auth on when
    a token is at hand: (GCS address, where the token comes from or None)."""
    from ray._private import services

    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0" and _CLUSTERS:
        del os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"]  # a local launch's, earlier
    ray_constants.ENABLE_RAY_CLUSTER = _CLUSTERS
    try:
        gcs = services.canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as err:
        raise ClusterError(f"--ray-address {address}: {err}") from None
    hostport = split_address(gcs) if gcs else None
    if not gcs or hostport is None:
        raise ClusterError(f"--ray-address {address}: not a Ray cluster address (give "
                           "HOST:PORT, the GCS address `ray start --head` printed)")
    why = probe(*hostport)
    if why:
        raise ClusterError(unreachable(gcs, address, why))
    problem = token_path_problem(os.environ)
    if problem:
        raise ClusterError(problem)
    apply(join_env(os.environ))
    _refresh_auth()
    token_mode = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    source = token_source(os.environ) if token_mode else None
    if token_mode and source is None:  # Ray's client aborts the process on this
        raise ClusterError(f"RAY_AUTH_MODE is token but no auth token is set here: {TOKEN_HELP}")
    failed = _probe_gcs(gcs)
    if failed:
        raise ClusterError(join_failure(gcs, failed, source))
    return gcs, source


def _probe_gcs(gcs: str) -> str | None:
    """Ray's error text when one GCS client (token and all) cannot talk to ``gcs``; None if it can."""
    from ray._raylet import InnerGcsClient  # type: ignore[attr-defined]  # not in ray/_raylet.pyi

    try:
        InnerGcsClient.standalone(gcs, None, GCS_PROBE_MS)
    except Exception as err:  # RpcError, AuthenticationError, ...: Ray's words name the cause
        return f"{type(err).__name__}: {err}"
    return None


@contextlib.contextmanager
def _bounded_connect(joining: bool) -> Iterator[None]:
    """While joining, Ray tries to reach the GCS CONNECT_TRIES times (~1 s each)
    instead of 20 (a user's own RAY_gcs_server_port_wait_time_s wins)."""
    key = "RAY_gcs_server_port_wait_time_s"
    if not joining or key in os.environ:
        yield
        return
    os.environ[key] = str(CONNECT_TRIES)
    try:
        yield
    finally:
        os.environ.pop(key, None)


def wait_for_nodes(expect: int, timeout: float, say: Callable[[str], None] | None = None) -> list[str]:
    """Wait up to ``timeout`` s for ``expect`` live Ray nodes; say how many joined; their hosts.

    A node that does not join in time is not an error: the sweep goes on with
    the nodes that did (one line says so).
    """
    def alive() -> list[dict[str, Any]]:
        return [n for n in ray.nodes() if n.get("Alive")]

    t0 = time.monotonic()
    nodes = alive()
    while len(nodes) < expect and time.monotonic() - t0 < timeout and not stop.requested():
        time.sleep(0.5)
        nodes = alive()
    hosts = sorted(str(n.get("NodeManagerHostname") or n.get("NodeManagerAddress")) for n in nodes)
    cpus = ray.cluster_resources().get("CPU", 0)
    line = f"ray cluster: {len(nodes)} of {expect} nodes joined ({', '.join(hosts)}; {cpus:g} CPUs)"
    if len(nodes) < expect:
        line += (f"; {expect - len(nodes)} did not join within {timeout:.0f} s, "
                 f"the sweep goes on with {len(nodes)}")
    if say is not None:
        say(line)
    return hosts
