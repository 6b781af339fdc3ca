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

Example:
    >>> app = build_app(ServeConfig(replicas=2, collection="docs"))  # doctest: +SKIP
    >>> url = start(ServeConfig(replicas=2, collection="docs"))       # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
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


def build_app(config: ServeConfig) -> Any:
    """The Serve application (a bound deployment) for ``config``."""
    _, serve = _ray()
    cpus = config.replica_cpus()
    actor_options: dict[str, Any] = {"num_cpus": cpus}
    env = {k: v for k, v in os.environ.items() if k.startswith(("REFRAG_RASD_", "HF_", "TRANSFORMERS_"))}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
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
    a ``serve deploy`` config's ``args``): ``args`` are :class:`ServeConfig` fields."""
    return build_app(ServeConfig.from_dict(dict(args)))


def start(config: ServeConfig, *, address: str | None = None, wait_s: float = 600.0) -> str:
    """Start (or join, with ``address``) Ray, run the application with Serve's HTTP proxy on
    ``config.host:config.port``, wait until every replica is up, and return the base URL
    (``http://host:port/v1`` is the OpenAI base URL)."""
    ray, serve = _ray()
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        else:
            kwargs.update(num_cpus=os.cpu_count() or 1, object_store_memory=128 * 1024 ** 2)
        ray.init(**kwargs)
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_app(config), name=config.app_name, route_prefix="/", blocking=False)
    wait_ready(config.app_name, config.replicas, timeout_s=wait_s)
    return f"http://{config.host}:{config.port}"


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


__all__ = ["EngineReplica", "app_builder", "build_app", "kill_replica", "replica_actor_names", "replica_states",
           "shutdown", "start", "wait_ready"]
