# pnoc pipeline image. CPU by default; a CUDA image with:
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 -t pnoc:cuda .
# (a CUDA base must provide python3.11; the torch wheels carry their own CUDA libraries)
# Run: docker run --rm -v "$PWD:/work" pnoc   -> `dvc repro` on the mounted project
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# git: DVC and the lineage tags read the repository. Not pinned: Debian replaces old
# point releases in its archive, so a pinned version stops building.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 pnoc
WORKDIR /opt/pnoc

COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
COPY pipelines ./pipelines
RUN python -m pip install -c constraints.txt .

USER 1000:1000
WORKDIR /work
# The project (dvc.yaml, params.yaml, data) is mounted at /work
CMD ["dvc", "repro"]
