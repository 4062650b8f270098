"""kvserve on Ray Serve: N replicas of the whole server (one engine and the OpenAI routes each) behind Ray's
HTTP proxy, which spreads requests over them and streams responses through unbuffered.

    kvserve serve --ray --num-replicas 2 [MODEL]          # a local Ray cluster, or --ray-address ADDR
    serve run app.ray_entry:build model=/models/x num_replicas=2   # Ray's own CLI (see app/ray_entry.py)

Each replica is a Ray actor with `--ray-cpus-per-replica` CPUs (its engine's torch threads, too). Ray calls
`check_health` every few seconds; a replica whose engine died (or that failed to load) is replaced. Stopping
a replica (scale-down, redeploy, `serve shutdown`) is graceful: Ray routes nothing new to it and waits up to
`--shutdown-timeout` + 5 s for its in-flight requests before the ASGI shutdown stops the engine. With
`--ray-max-replicas N` (> --num-replicas) the deployment autoscales on ongoing requests per replica (queue
depth). Every response carries `X-Kvserve-Replica`, so a client (and the tests) can see who answered.
`ray[serve]` is an optional extra: `pip install 'kvserve[ray]'`.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Callable

from .settings import Settings

AppFactory = Callable[..., Any]  # app.main.create_app(settings, engine=...): passed in, so no import cycle

log = logging.getLogger("kvserve")
REPLICA_HEADER = "x-kvserve-replica"
APP_NAME = "kvserve"


def _import_serve():
    try:
        from ray import serve
    except ImportError:
        raise SystemExit("kvserve serve --ray: Ray Serve is not installed; pip install 'kvserve[ray]'") from None
    return serve


class ReplicaHeader:
    """Pure ASGI: add `X-Kvserve-Replica: <id>` to every response."""

    def __init__(self, app: Any, replica_id: str) -> None:
        self.app, self.value = app, replica_id.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def tagged(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER.encode(), self.value)]}
            await send(message)

        await self.app(scope, receive, tagged)


class KvserveReplica:
    """One replica: the engine loaded in the constructor, then the server's ASGI app around it."""

    def __init__(self, settings: Settings, create_app: AppFactory) -> None:
        from ray import serve

        from model import AsyncEngine

        self.settings = settings
        self.create_app = create_app
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.engine = AsyncEngine(settings.engine_config())
        self.engine.start()
        self.server_app: Any = None

    def __serve_build_asgi_app__(self) -> Any:
        self.server_app = self.create_app(self.settings, engine=self.engine)
        self.server_app.add_middleware(ReplicaHeader, replica_id=self.replica_id)
        return self.server_app

    def check_health(self) -> None:
        """Ray's health probe: raise (and be replaced) once the engine is dead."""
        if self.engine.is_dead:
            raise RuntimeError("the engine stopped after an internal error")


def deployment_options(settings: Settings) -> dict[str, Any]:
    cpus = settings.ray_cpus_per_replica
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": cpus},
        "health_check_period_s": 5.0,
        "health_check_timeout_s": 30.0,
        "graceful_shutdown_wait_loop_s": 1.0,
        "graceful_shutdown_timeout_s": settings.shutdown_timeout + 5.0,
        "max_ongoing_requests": settings.max_queue,
    }
    if settings.ray_max_replicas and settings.ray_max_replicas > settings.num_replicas:
        options["autoscaling_config"] = {
            "min_replicas": settings.num_replicas,
            "max_replicas": settings.ray_max_replicas,
            "target_ongoing_requests": max(1, settings.max_num_seqs or 16),
        }
    else:
        options["num_replicas"] = settings.num_replicas
    return options


def application(settings: Settings, create_app: AppFactory) -> Any:
    """The Ray Serve application; each replica's engine gets one torch thread per CPU it was given."""
    serve = _import_serve()
    from dataclasses import replace

    replica_settings = replace(settings, num_threads=settings.num_threads or int(settings.ray_cpus_per_replica))
    deployment = serve.deployment(name="kvserve-replica", **deployment_options(settings))(
        serve.ingress()(KvserveReplica)
    )
    return deployment.bind(replica_settings, create_app)


def run(settings: Settings, create_app: AppFactory) -> int:
    """`kvserve serve --ray`: start (or join) Ray, run the application on --host/--port, wait for a signal."""
    import ray

    serve = _import_serve()
    ray.init(address=settings.ray_address, log_to_driver=False, ignore_reinit_error=True)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.run(application(settings, create_app), name=APP_NAME, route_prefix="/")
        log.info(
            "serving on Ray at http://%s:%d/v1 with %d replica(s)", settings.host, settings.port, settings.num_replicas
        )
        stop.wait()
        log.info("stopping: draining the replicas")
        serve.delete(APP_NAME)  # graceful: in-flight requests finish first
        return 0
    except Exception as exc:  # noqa: BLE001 - one clear line, exit code 2
        log.error("kvserve serve --ray failed: %s", exc)
        return 2
    finally:
        serve.shutdown()
        ray.shutdown()
