# A stand-in for the NGC Triton image where no registry (and no GPU) is available: the real
# `tritonserver` binary that the nvidia-pytriton wheel carries, on the CPU, with the Python backend
# assembled as `explore infra` does (streams/infra/triton.py). Build context: the repository root.
#
#   podman build --network host -f docker/local/triton.Dockerfile \
#       --build-arg PYTHON_IMAGE=localhost/explore-python:3.11 -t interest-explorer:triton .

ARG PYTHON_IMAGE=localhost/explore-python:3.11
FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 OMP_NUM_THREADS=1
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libpython3.11 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY interests ./interests
COPY exporters ./exporters
COPY streams ./streams
COPY explore ./explore
COPY triton_models ./triton_models
RUN pip install ".[embedded]" && rm -rf build *.egg-info
COPY --chmod=0755 docker/local/tritonserver.py /usr/local/bin/tritonserver
EXPOSE 8000 8001 8002
