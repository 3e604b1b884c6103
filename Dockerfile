# syntax=docker/dockerfile:1
# socialpulse images. Targets:
#   runtime (default)  the worker and the replay producer; no training extra, no torch.
#                      --build-arg VARIANT=gpu swaps onnxruntime for onnxruntime-gpu with its CUDA/cuDNN wheels.
#   models             the training extra, for building model artifacts into a volume (profile "models").
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    SOCIALPULSE_MODEL_DIR=/app/.cache/models/default \
    SOCIALPULSE_TENSORRT_CACHE_DIR=/app/.cache/tensorrt
WORKDIR /app
RUN useradd --system --uid 10001 --home-dir /app socialpulse \
    && mkdir -p /app/.cache/models /app/.cache/data /app/.cache/tensorrt \
    && chown -R socialpulse /app/.cache
COPY pyproject.toml README.md* ./
COPY stream ./stream
COPY models ./models

FROM base AS runtime
ARG VARIANT=cpu
# The CPU and GPU onnxruntime wheels provide the same module and must not coexist.
RUN pip install . \
    && if [ "$VARIANT" = "gpu" ]; then \
         pip uninstall -y onnxruntime && pip install "onnxruntime-gpu[cuda,cudnn]>=1.20"; \
       fi
USER socialpulse
# Inside a container the web page and the exporter must listen beyond loopback.
ENV SOCIALPULSE_WEB_HOST=0.0.0.0 \
    SOCIALPULSE_METRICS_HOST=0.0.0.0
EXPOSE 6066 9464
CMD ["socialpulse", "run"]

FROM base AS models
RUN pip install ".[train]"
USER socialpulse
