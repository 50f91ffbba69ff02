# Control plane: FastAPI + the control runner. Slim on purpose: no torch, no CUDA (the control
# plane imports task modules for validation only; heavy imports live inside the task functions).
# Build from the repository root:  docker build -f docker/control-plane.Dockerfile .
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dualplane ./dualplane
# the base dependencies only: no [ml] extra, so no torch
RUN pip install .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    DUALPLANE_CONTROL_HOST=0.0.0.0 DUALPLANE_CONTROL_PORT=8000
COPY --from=build /opt/venv /opt/venv
RUN useradd --create-home --uid 10001 dualplane
USER dualplane
WORKDIR /home/dualplane
EXPOSE 8000
# one uvicorn process per container: scale with replicas (Prometheus scrapes each one)
CMD ["dualplane", "control-plane"]
