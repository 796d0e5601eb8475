# syntax=docker/dockerfile:1
# One image for the gateway, the drift sidecar and every Ray pod (head and workers): a Ray driver
# and its cluster must run the same Ray and Python, so all of them come from pyproject.toml and
# requirements.lock here (Ray is pinned there).
#
#   docker build -t model-gateway:0.1.0 .
#   docker build --build-arg EXTRAS=gpu -t model-gateway:0.1.0-gpu .   # adds CuPy (CUDA 12)
#
# The `all` extra is always installed: the build trains the example models (scikit-learn), the
# drift sidecar draws its reports (matplotlib), and `gateway logs query` in the pod needs DuckDB.
# EXTRAS adds to it.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, so that a change of the code alone reuses this layer.
COPY requirements.lock ./
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY gateway ./gateway
COPY serving ./serving
COPY loadtests ./loadtests
RUN pip install --constraint requirements.lock ".[all${EXTRAS:+,$EXTRAS}]"
# The example models, trained and exported at build time, so the default install serves them
# from a read-only path that is the same on the gateway and on every Ray pod.
RUN cd / && python -c "from pathlib import Path; from serving.examples import ensure_examples; \
ensure_examples(Path('/opt/model-gateway/model_repository'))"

FROM ${PYTHON_IMAGE}
# tini reaps the Ray processes the gateway container starts and forwards SIGTERM to the gateway;
# wget is what KubeRay's default probes of Ray pods run.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends tini wget \
    && rm -rf /var/lib/apt/lists/*
# uid 1000 like the Ray project's images, so volumes prepared for those work here too.
RUN groupadd --gid 1000 ray && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash ray
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=1000:1000 /opt/model-gateway /opt/model-gateway
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RAY_USAGE_STATS_ENABLED=0
USER 1000:1000
WORKDIR /home/ray
EXPOSE 8000 8001 8002 8003
ENTRYPOINT ["tini", "--"]
CMD ["gateway", "serve", "--host", "0.0.0.0", "--repository", "/opt/model-gateway/model_repository"]
