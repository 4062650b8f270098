"""kvserve on Ray Serve (app/ray_serve.py): a local Ray cluster started here, two replicas of the tiny model
behind Ray's HTTP proxy on 127.0.0.1. Requests spread over both replicas (the X-Kvserve-Replica header),
a stream arrives token by token through the proxy (not buffered), killing one replica's actor loses no
request sent after it and Ray brings the replica back, and deleting the application lets an in-flight
stream finish (graceful drain)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from http_server import TINY_NAME, free_port

pytestmark = pytest.mark.slow
import ray  # noqa: E402 - from the test extra: a missing ray must fail, not skip
from ray import serve  # noqa: E402

from app.cli_args import parse_settings  # noqa: E402
from app.main import create_app  # noqa: E402
from app.ray_serve import APP_NAME, REPLICA_HEADER, application  # noqa: E402

DEPLOYMENT = "kvserve-replica"


@pytest.fixture(scope="module")
def ray_app(tiny_llama_dir):
    port = free_port()
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = parse_settings(
        [tiny_llama_dir, "--served-model-name", TINY_NAME, "--dtype", "float32", "--kv-cache-memory", "8MiB",
         "--num-replicas", "2", "--ray-cpus-per-replica", "1", "--shutdown-timeout", "5"]
    )  # fmt: skip
    serve.run(application(settings, create_app), name=APP_NAME, route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _running_replicas() -> int:
    status = serve.status().applications[APP_NAME].deployments[DEPLOYMENT]
    return status.replica_states.get("RUNNING", 0)


def _chat(base: str, **kw) -> httpx.Response:
    body = {"model": TINY_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, **kw}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)


def test_requests_spread_over_both_replicas(ray_app):
    seen = set()
    for _ in range(16):
        r = _chat(ray_app)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] is not None
        seen.add(r.headers[REPLICA_HEADER])
    assert len(seen) == 2, seen


def test_a_stream_arrives_token_by_token(ray_app):
    body = {"model": TINY_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200,
            "ignore_eos": True, "stream": True}  # fmt: skip
    t0 = time.monotonic()
    arrivals = []
    with httpx.stream("POST", f"{ray_app}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                arrivals.append(time.monotonic() - t0)
    total = time.monotonic() - t0
    assert len(arrivals) >= 100
    # Buffered, every chunk would arrive at the end; streamed, they spread over the generation.
    assert arrivals[len(arrivals) // 2] < 0.8 * total and arrivals[-1] - arrivals[0] > 0.3 * total


def test_killing_a_replica_loses_no_new_request_and_ray_replaces_it(ray_app):
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if DEPLOYMENT in a["name"]]
    assert len(names) == 2, names
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    for _ in range(10):  # sent after the kill: every one must be answered
        assert _chat(ray_app).status_code == 200
    deadline = time.monotonic() + 120
    while _running_replicas() < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert _running_replicas() == 2
    assert {_chat(ray_app).headers[REPLICA_HEADER] for _ in range(16)} - {names[0].rsplit("#", 1)[-1]}


def test_deleting_the_application_drains_in_flight_streams(ray_app):
    body = {"model": TINY_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        with httpx.stream("POST", f"{ray_app}/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                lines.append(line)
                started.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert started.wait(30)
    serve.delete(APP_NAME)  # graceful: Ray waits for the replicas' requests in flight
    reader.join(60)
    events = [line for line in lines if line]
    assert events[-1] == "data: [DONE]", events[-3:]
    assert any('"finish_reason":"length"' in line for line in events)
    assert '"completion_tokens":400' in events[-2]  # the usage chunk: every token was generated and sent


def test_deployment_options_and_the_serve_run_entry_point(tiny_llama_dir):
    from app.ray_entry import build
    from app.ray_serve import deployment_options

    fixed = deployment_options(parse_settings([tiny_llama_dir, "--num-replicas", "3", "--shutdown-timeout", "7"]))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["graceful_shutdown_timeout_s"] == 12.0 and fixed["ray_actor_options"] == {"num_cpus": 1.0}
    scaled = deployment_options(parse_settings([tiny_llama_dir, "--num-replicas", "1", "--ray-max-replicas", "4"]))
    assert scaled["autoscaling_config"]["min_replicas"] == 1 and scaled["autoscaling_config"]["max_replicas"] == 4
    assert "num_replicas" not in scaled
    app = build({"model": tiny_llama_dir, "num_replicas": "2", "ray_cpus_per_replica": "2"})
    assert type(app).__name__ == "Application"
