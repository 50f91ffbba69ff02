# Data-plane worker on a CUDA runtime base with a CUDA build of torch.
# Build from the repository root:  docker build -f docker/worker.Dockerfile .
# Model weights are never baked in: the worker downloads them from the object store into
# DUALPLANE_MODEL_CACHE_DIR (a volume) on first use, checked against their manifest.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128

FROM ${CUDA_IMAGE} AS build
ARG TORCH_INDEX
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dualplane ./dualplane
# torch and the rest of the ml extra in ONE resolution (see Makefile venv-ml), torch from the
# CUDA wheel index, everything else from PyPI
RUN pip install --index-url "${TORCH_INDEX}" --extra-index-url https://pypi.org/simple \
      'torch==2.13.0' '.[ml]'

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ffmpeg \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    DUALPLANE_WORKER_HOST=0.0.0.0 DUALPLANE_WORKER_PORT=8001 \
    DUALPLANE_MODEL_CACHE_DIR=/var/cache/dualplane/models \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility,video
RUN useradd --create-home --uid 10001 dualplane \
 && mkdir -p /var/cache/dualplane/models && chown dualplane /var/cache/dualplane/models
USER dualplane
WORKDIR /home/dualplane
VOLUME ["/var/cache/dualplane/models"]
EXPOSE 8001
# SIGTERM drains: running nodes finish for DUALPLANE_SHUTDOWN_GRACE_S, the rest is released
CMD ["dualplane", "worker"]
