"""The Ray Serve application: N replicas of the engine behind Serve's HTTP proxy.

Each replica is a Ray actor that loads the model once and runs one decoding loop
(``max_ongoing_requests=1``); Serve queues the other requests at the proxy, routes each to a free replica,
refuses with 503 past ``max_queued_requests``, health-checks replicas and replaces one that dies. Every replica
reads the same Chroma server (``REFRAG_RASD_CHROMA_URL``), so they all see the same passages and chunk
embeddings. Nothing here is a server of our own: the HTTP proxy, queue, routing and restarts are Serve's.

Three ways to run it:

* ``refrag-rasd serve --replicas 2 --collection docs`` (a local Ray instance; prints the URL);
* :func:`start` from Python;
* Ray's own tooling on a cluster: ``serve run refrag_rasd_integrations.serve:app_builder replicas=4
  collection=docs chroma_url=http://chroma:8000`` or a ``serve deploy`` config file whose ``import_path`` is
  ``refrag_rasd_integrations.serve:app_builder`` and whose ``args`` are :class:`ServeConfig` fields.

Nothing listens beyond this machine unless asked: a local Ray instance binds its own ports to loopback
(dashboard off), Serve's HTTP proxy listens on ``config.host`` (127.0.0.1 by default). Replicas get the
settings they need explicitly (:func:`replica_env`: ``REFRAG_RASD_*``, offline switches and cache folders,
never a variable named like a secret); API keys reach them only as digests, Chroma headers in the config.

Example:
    >>> sorted(replica_env({"HF_TOKEN": "hf_x", "HF_HOME": "/c", "REFRAG_RASD_API_KEYS": "k", "PATH": "/b"}))
    ['HF_HOME', 'HF_HUB_OFFLINE', 'TOKENIZERS_PARALLELISM']
    >>> app = build_app(ServeConfig(replicas=2, collection="docs"))  # doctest: +SKIP
    >>> url = start(ServeConfig(replicas=2, collection="docs"))       # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from refrag_rasd_core.errors import RefragRasdError

from .chat_service import ChatService, ServeConfig


def _ray() -> Any:
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise RefragRasdError("serving needs Ray Serve: pip install 'refrag-rasd-integrations[serve]'") from exc
    return ray, serve


class EngineReplica:
    """One replica: a :class:`ChatService` and the FastAPI app over it (Serve calls
    ``__serve_build_asgi_app__`` after the constructor)."""

    def __init__(self, config: dict[str, Any]) -> None:
        if os.environ.get(LOOPBACK_ENV) == "1":
            _loopback_replica_grpc()
        cfg = ServeConfig.from_dict(config)
        if cfg.threads is None:  # the CPUs Ray gave this replica
            ray, _ = _ray()
            cfg.threads = max(int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)), 1)
        self.service = ChatService(cfg)

    def __serve_build_asgi_app__(self) -> Any:
        from .http_api import make_api

        return make_api(self.service)

    def check_health(self) -> None:
        """Serve's periodic health check: the engine is loaded."""
        if self.service.engine is None:  # pragma: no cover - the constructor would have failed
            raise RuntimeError("the engine is not loaded")


LOOPBACK_ENV = "REFRAG_RASD_RAY_LOOPBACK"
"""Set to 1 in the replicas of a local Ray instance: their own servers bind to loopback."""
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH", "HEADER")
"""A variable whose name holds one of these is never copied into a replica's environment."""
SHARED_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "HF_HUB_CACHE",
               "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "SENTENCE_TRANSFORMERS_HOME", "TORCH_HOME",
               "XDG_CACHE_HOME")
"""Besides ``REFRAG_RASD_*``: the offline switches and cache folders a replica needs to find the model."""


def replica_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment variables handed to replicas: ``REFRAG_RASD_*`` and :data:`SHARED_VARS`, none named
    like a secret (:data:`SECRET_WORDS`), plus ``HF_HUB_OFFLINE=1`` and ``TOKENIZERS_PARALLELISM=false``
    unless set."""
    env = {k: v for k, v in environ.items() if (k.startswith("REFRAG_RASD_") or k in SHARED_VARS)
           and not any(word in k.upper() for word in SECRET_WORDS)}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def build_app(config: ServeConfig, *, loopback: bool = False) -> Any:
    """The Serve application (a bound deployment) for ``config``; ``loopback``: the replicas' own servers bind
    to 127.0.0.1 (a local Ray instance)."""
    _, serve = _ray()
    cpus = config.replica_cpus()
    actor_options: dict[str, Any] = {"num_cpus": cpus}
    env = replica_env(os.environ)
    if loopback:
        env[LOOPBACK_ENV] = "1"
    actor_options["runtime_env"] = {"env_vars": env}
    if config.device.startswith("cuda"):
        actor_options["num_gpus"] = 1
    deployment = serve.deployment(
        serve.ingress()(EngineReplica),
        name="EngineReplica",
        num_replicas=config.replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=config.max_queued_requests,
        ray_actor_options=actor_options,
        health_check_period_s=5.0,
        graceful_shutdown_timeout_s=10.0,
    )
    return deployment.bind(config.to_dict())


def app_builder(args: dict[str, Any]) -> Any:
    """Ray's application builder (``serve run refrag_rasd_integrations.serve:app_builder key=value ...``;
    a ``serve deploy`` config's ``args``): ``args`` are :class:`ServeConfig` fields; API keys in
    ``$REFRAG_RASD_API_KEYS`` where it runs are added (as digests)."""
    from .auth import KeyRing

    cfg = ServeConfig.from_dict(dict(args))
    ring = KeyRing.parse(env=os.environ)
    if ring:
        cfg.api_keys = {**(cfg.api_keys or {}), **ring.digests()}
    return build_app(cfg)


def start(config: ServeConfig, *, address: str | None = None, wait_s: float = 600.0) -> str:
    """Start (or join, with ``address``) Ray, run the application with Serve's HTTP proxy on
    ``config.host:config.port``, wait until every replica is up, and return the base URL
    (``http://host:port/v1`` is the OpenAI base URL)."""
    if not address:
        _loopback_ray()
    ray, serve = _ray()
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        else:
            kwargs.update(num_cpus=os.cpu_count() or 1, object_store_memory=128 * 1024 ** 2,
                          _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1")
        ray.init(**kwargs)
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_app(config, loopback=not address), name=config.app_name, route_prefix="/", blocking=False)
    wait_ready(config.app_name, config.replicas, timeout_s=wait_s)
    return f"http://{config.host}:{config.port}"


def _loopback_ray() -> None:
    """Make a local Ray instance bind its ports (GCS, raylet, workers, dashboard agent) to 127.0.0.1: Ray
    resolves ``127.0.0.1`` to the machine's outward address unless clustering is off
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read by Ray at import and by the processes it starts)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # ray was imported before: its flag is read at each call
    except ImportError:  # pragma: no cover - Ray missing: _ray() says so
        pass


def _loopback_replica_grpc() -> None:
    """In a replica of a local instance: Serve (2.60) binds each replica's inter-deployment gRPC server to
    ``[::]:0``, every interface, with no option to change it; bind it to 127.0.0.1 instead (one machine, so
    nothing that calls it is elsewhere). A Ray without that hook is left as it is."""
    try:
        from ray.serve._private import replica
    except ImportError:  # pragma: no cover - depends on the Ray version
        return
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "_refrag_rasd_loopback", False):
        return

    def bind_loopback(server: Any, address: str) -> Any:
        return original(server, address.replace("[::]", "127.0.0.1", 1))

    bind_loopback._refrag_rasd_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = bind_loopback


def replica_states(app_name: str) -> dict[str, int]:
    """How many replicas of the application are in each state (``RUNNING``, ``STARTING``, ...)."""
    _, serve = _ray()
    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    states: dict[str, int] = {}
    for dep in app.deployments.values():
        for state, n in dep.replica_states.items():
            states[str(getattr(state, "value", state))] = states.get(str(getattr(state, "value", state)), 0) + n
    return states


def wait_ready(app_name: str, replicas: int, *, timeout_s: float = 600.0, gone: Sequence[str] = ()) -> None:
    """Block until ``replicas`` replicas of the application run and none of the replica actors named in
    ``gone`` (e.g. one just killed) is among them (raises after ``timeout_s``)."""
    _, serve = _ray()
    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(app_name)
        status = str(getattr(getattr(app, "status", None), "value", ""))
        if status == "DEPLOY_FAILED":
            raise RefragRasdError(f"the application failed to deploy: {app.message}")
        if (status == "RUNNING" and replica_states(app_name).get("RUNNING", 0) >= replicas
                and not set(gone) & set(replica_actor_names(app_name))):
            return
        if time.monotonic() > deadline:
            raise RefragRasdError(f"the application was not ready after {timeout_s:.0f} s "
                                  f"(replicas: {replica_states(app_name)}; status {status or 'unknown'})")
        time.sleep(0.5)


def replica_actor_names(app_name: str) -> list[str]:
    """The Ray actor names of the application's replicas (namespace ``serve``), e.g. to kill one in a test."""
    ray, _ = _ray()
    from ray.util import list_named_actors

    return sorted(a["name"] for a in list_named_actors(all_namespaces=True)
                  if a.get("namespace") == "serve" and a["name"].startswith("SERVE_REPLICA::")
                  and f"::{app_name}#" in a["name"])


def kill_replica(app_name: str, index: int = 0) -> str:
    """Kill one replica's actor (``ray.kill``, no restart by Ray: Serve notices and starts a new one);
    returns its name."""
    ray, _ = _ray()
    names = replica_actor_names(app_name)
    if not names:
        raise RefragRasdError(f"no running replica of {app_name!r}")
    name = names[index % len(names)]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    return name


def shutdown() -> None:
    """Stop Serve and the local Ray instance."""
    ray, serve = _ray()
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


__all__ = ["SECRET_WORDS", "SHARED_VARS", "EngineReplica", "app_builder", "build_app", "kill_replica",
           "replica_actor_names", "replica_env", "replica_states", "shutdown", "start", "wait_ready"]
