#!/usr/bin/env bash
# The real container test (`make docker-test`):
#   1. use the running Docker engine, or start one (vfs storage, no bridge, no iptables);
#   2. base image: $BASE_IMAGE, else python:3.11-slim if present or pullable, else a local Debian bookworm
#      image made with debootstrap (kvserve-base:bookworm, built once and reused);
#   3. build kvserve:latest (host network; torch from $PIP_FIND_LINKS, CA bundle from $PIP_CERT);
#   4. run it on a free port on 127.0.0.1 (host network), wait for /health, chat through the openai SDK,
#      wait for Docker's HEALTHCHECK to report healthy;
#   5. `docker stop` (SIGTERM) and require exit code 0.
# It skips (exit 0 with a SKIP line) only when no Docker engine can be started.
#
# Environment: PYTHON (interpreter with the openai package; default .venv/bin/python), IMAGE (kvserve:latest),
# BASE_IMAGE, HEALTH_TIMEOUT (180 s), KEEP_DOCKERD=1 (leave a daemon this script started running),
# DOCKER_TEST_NO_INSTALL=1 (never apt-get install docker.io / debootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-kvserve:latest}
BUILDER_IMAGE=${IMAGE%:*}-builder:latest
PYTHON=${PYTHON:-.venv/bin/python}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-180}
LOCAL_BASE=kvserve-base:bookworm
DEFAULT_BASE=python:3.11-slim
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvserve-docker-test.XXXXXX")
CONTAINER=kvserve-docker-test-$$
DOCKERD_PID=

log() { printf '[docker-test] %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
skip() { log "SKIP: $*"; exit 0; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"; else return 1; fi; }
can_install() { [ "${DOCKER_TEST_NO_INSTALL:-0}" != 1 ] && command -v apt-get >/dev/null && as_root true; }

cleanup() {
    local rc=$?
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
    fi
    if [ -n "$DOCKERD_PID" ] && [ "${KEEP_DOCKERD:-0}" != 1 ]; then
        log "stopping the Docker engine this test started (pid $DOCKERD_PID)"
        as_root kill "$DOCKERD_PID" 2>/dev/null || true
        for _ in $(seq 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT

# ------------------------------------------------------------------------------------ 1. a Docker engine
start_engine() {
    if ! command -v dockerd >/dev/null; then
        if can_install; then
            log "no dockerd: installing Debian's docker.io"
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io \
                >"$WORK/apt-docker.log" 2>&1 \
                || { as_root apt-get update -qq >/dev/null 2>&1 && as_root env DEBIAN_FRONTEND=noninteractive \
                     apt-get install -y -qq --no-install-recommends docker.io >"$WORK/apt-docker.log" 2>&1; } \
                || { tail -5 "$WORK/apt-docker.log" >&2; return 1; }
        else
            return 1
        fi
    fi
    local logfile=${TMPDIR:-/tmp}/kvserve-dockerd.log sudo=()
    if [ "$(id -u)" != 0 ]; then sudo -n true 2>/dev/null || return 1; sudo=(sudo -n); fi
    log "starting a Docker engine (vfs, no bridge, no iptables; log: $logfile)"
    ${sudo[@]+"${sudo[@]}"} dockerd --storage-driver=vfs --bridge=none --iptables=false --ip6tables=false >"$logfile" 2>&1 &
    DOCKERD_PID=$!  # dockerd itself (or sudo, which passes SIGTERM on)
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return 0
        kill -0 "$DOCKERD_PID" 2>/dev/null || break
        sleep 1
    done
    tail -5 "$logfile" >&2 || true
    as_root kill "$DOCKERD_PID" 2>/dev/null || true
    DOCKERD_PID=
    return 1
}

command -v docker >/dev/null || { can_install && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends docker.io >/dev/null 2>&1; } || skip "no docker command and it cannot be installed"
if docker info >/dev/null 2>&1; then
    log "using the running Docker engine ($(docker version -f '{{.Server.Version}}'))"
else
    start_engine || skip "no Docker engine runs and none could be started (needs root and dockerd)"
    log "Docker engine $(docker version -f '{{.Server.Version}}') started"
fi

[ -x "$PYTHON" ] || PYTHON=$(command -v python3)
"$PYTHON" -c 'import openai' 2>/dev/null \
    || die "$PYTHON has no 'openai' package (run 'make install' first, or set PYTHON=...)"

# ------------------------------------------------------------------------------------ 2. the base image
make_local_base() {
    if ! command -v debootstrap >/dev/null; then
        can_install || die "debootstrap is missing and cannot be installed"
        log "installing debootstrap"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap \
            >/dev/null 2>&1 || { as_root apt-get update -qq >/dev/null 2>&1 && as_root env \
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
    fi
    local rootfs=$WORK/rootfs t0=$SECONDS
    log "building $LOCAL_BASE with debootstrap (Debian bookworm minbase + python3, a few minutes)"
    as_root debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
        "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    as_root sh -c "rm -rf '$rootfs'/var/cache/apt/*.bin '$rootfs'/var/cache/apt/archives/*.deb \
        '$rootfs'/var/lib/apt/lists/* '$rootfs'/usr/share/doc/* '$rootfs'/usr/share/man/* \
        '$rootfs'/usr/share/info/* '$rootfs'/usr/share/locale/* '$rootfs'/var/log/*.log '$rootfs'/tmp/*"
    as_root tar -C "$rootfs" -c . | docker import \
        -c 'ENV LANG=C.UTF-8' -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["python3"]' -m "Debian bookworm minbase + python3 (kvserve docker-test)" - "$LOCAL_BASE" >/dev/null
    as_root rm -rf "$rootfs"
    log "$LOCAL_BASE built in $((SECONDS - t0)) s"
}

if [ -n "${BASE_IMAGE:-}" ]; then
    docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || docker pull "$BASE_IMAGE" >/dev/null \
        || die "BASE_IMAGE=$BASE_IMAGE is neither present nor pullable"
elif docker image inspect "$DEFAULT_BASE" >/dev/null 2>&1; then
    BASE_IMAGE=$DEFAULT_BASE
elif timeout 120 docker pull -q "$DEFAULT_BASE" >/dev/null 2>&1; then
    BASE_IMAGE=$DEFAULT_BASE
else
    log "cannot pull $DEFAULT_BASE; using the local Debian base $LOCAL_BASE"
    docker image inspect "$LOCAL_BASE" >/dev/null 2>&1 || make_local_base
    BASE_IMAGE=$LOCAL_BASE
fi
log "base image: $BASE_IMAGE"

# ------------------------------------------------------------------------------------ 3. build
# torch: the CPU wheel from the local wheel folder(s), so the build does not fetch 190 MB again.
IFS=' ' read -r -a find_links <<<"${PIP_FIND_LINKS:-/opt/wheels}"
for d in "${find_links[@]}"; do
    for w in "$d"/torch-*.whl; do
        [ -f "$w" ] && ! cmp -s "$w" "docker/wheels/$(basename "$w")" && cp "$w" docker/wheels/
    done
done
ls docker/wheels/torch-*.whl >/dev/null 2>&1 && log "torch wheel: $(basename docker/wheels/torch-*.whl | head -1)" \
    || log "no local torch wheel; the build fetches torch from the PyTorch CPU index"
# An extra CA bundle for pip (TLS-intercepting proxy).
ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
[ -f "$ca" ] && cp "$ca" docker/certs/host-ca-bundle.crt && log "extra CA bundle for pip: $ca"

log "building $IMAGE (TORCH_VARIANT=cpu, BASE_IMAGE=$BASE_IMAGE)"
t0=$SECONDS
build=(docker build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg TORCH_VARIANT=cpu
       --label kvserve.docker-test=1)
# The builder stage gets a tag of its own, so that pruning dangling images below keeps the build cache.
{ "${build[@]}" --target builder -t "$BUILDER_IMAGE" . && "${build[@]}" -t "$IMAGE" .; } >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log" >&2; die "docker build failed"; }
build_s=$((SECONDS - t0))
cached=$(grep -c 'Using cache' "$WORK/build.log" || true)
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
log "built $IMAGE in ${build_s} s ($cached cached steps); image size $((size / 1000000)) MB"
# This test's older images (untagged now) take gigabytes on vfs.
docker image prune -f --filter label=kvserve.docker-test >/dev/null 2>&1 || true

# ------------------------------------------------------------------------------------ 4. run and query
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log "starting $CONTAINER: kvserve serve --host 127.0.0.1 --port $PORT"
# Arguments after the image replace CMD (as in `docker run IMAGE serve /models/x`). KVSERVE_PORT tells the
# HEALTHCHECK the port; health probes every 2 s instead of 15 s to keep the test short.
docker run -d --name "$CONTAINER" --network host -e KVSERVE_PORT="$PORT" \
    --health-interval 2s --health-start-period "${HEALTH_TIMEOUT}s" \
    "$IMAGE" serve --host 127.0.0.1 --port "$PORT" >/dev/null

t0=$SECONDS
until "$PYTHON" -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" \
        2>/dev/null; do
    if [ "$(docker inspect -f '{{.State.Running}}' "$CONTAINER")" != true ]; then
        docker logs "$CONTAINER" 2>&1 | tail -30 >&2
        die "the container exited before /health answered"
    fi
    [ $((SECONDS - t0)) -lt "$HEALTH_TIMEOUT" ] || { docker logs "$CONTAINER" 2>&1 | tail -30 >&2; \
        die "/health did not answer 200 within $HEALTH_TIMEOUT s"; }
    sleep 1
done
log "/health is 200 after $((SECONDS - t0)) s"

"$PYTHON" - "$PORT" <<'EOF' || { docker logs "$CONTAINER" 2>&1 | tail -30 >&2; die "chat request failed"; }
import sys
import urllib.request

from openai import OpenAI

port = sys.argv[1]
client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=120, max_retries=0)
models = [m.id for m in client.models.list().data]
assert models, "no models listed"
reply = client.chat.completions.create(
    model=models[0], messages=[{"role": "user", "content": "What is the capital of France?"}],
    max_tokens=32, temperature=0,
)
text = reply.choices[0].message.content
print(f"[docker-test] model {models[0]!r} answered ({reply.choices[0].finish_reason}, "
      f"{reply.usage.completion_tokens} tokens): {text!r}", file=sys.stderr)
assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-"), reply
assert text and text.strip(), "empty reply"
assert reply.choices[0].finish_reason in ("stop", "length"), reply.choices[0].finish_reason
assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0, reply.usage
stream = client.chat.completions.create(
    model=models[0], messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0,
    stream=True,
)
chunks = list(stream)
assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length"), chunks[-1:]
print(f"[docker-test] streamed {len(chunks)} chunks", file=sys.stderr)
# /metrics: report (not fail on) vLLM metric names the Grafana dashboard uses that are not exported yet.
body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
wanted = ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
          "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
          "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
          "vllm:e2e_request_latency_seconds_bucket"]
missing = [name for name in wanted if f"\n{name}" not in "\n" + body]
print("[docker-test] /metrics: " + (f"not yet exported: {', '.join(missing)}" if missing
      else "every metric the dashboard uses is exported"), file=sys.stderr)
EOF

t0=$SECONDS
while :; do
    health=$(docker inspect -f '{{.State.Health.Status}}' "$CONTAINER")
    [ "$health" = healthy ] && break
    [ "$health" != unhealthy ] || { docker inspect -f '{{json .State.Health.Log}}' "$CONTAINER" >&2; \
        die "Docker's HEALTHCHECK reports unhealthy"; }
    [ $((SECONDS - t0)) -lt 60 ] || die "Docker's HEALTHCHECK still says '$health' after 60 s"
    sleep 1
done
log "Docker HEALTHCHECK: healthy"
user=$(docker exec "$CONTAINER" id -u)
[ "$user" != 0 ] || die "the server runs as root in the container"
log "the server runs as uid $user"
# The prebuilt CPU kernels load without a compiler and the fused decoder serves (not the float32 fallback).
docker logs "$CONTAINER" 2>&1 | grep -E "kernels: loaded|fused CPU decoder" >&2 \
    || { docker logs "$CONTAINER" 2>&1 | tail -30 >&2; die "the image's prebuilt CPU kernels did not load"; }

# ------------------------------------------------------------------------------------ 5. SIGTERM
t0=$SECONDS
docker stop -t 30 "$CONTAINER" >/dev/null
stop_s=$((SECONDS - t0))
code=$(docker inspect -f '{{.State.ExitCode}}' "$CONTAINER")
docker logs "$CONTAINER" >"$WORK/container.log" 2>&1 || true
case "$code" in
0) log "docker stop (SIGTERM): exit code 0 after ${stop_s} s" ;;
143) tail -20 "$WORK/container.log" >&2; die "exit code 143: the server died of SIGTERM instead of shutting down" ;;
137) tail -20 "$WORK/container.log" >&2; die "exit code 137: the server ignored SIGTERM and was killed after 30 s" ;;
*) tail -20 "$WORK/container.log" >&2; die "exit code $code after docker stop" ;;
esac
log "PASS (build ${build_s} s, image $((size / 1000000)) MB, stop ${stop_s} s)"
