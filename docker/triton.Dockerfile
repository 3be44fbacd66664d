# syntax=docker/dockerfile:1
# Triton for the engine: the NGC image plus what the engine's Python-backend models import.
#
# triton_models/seqrec/1/model.py and triton_models/interest_generator/1/model.py (with the
# constrained.py the exporter copies beside it) run their ONNX graphs through onnxruntime and
# numpy inside the Python backend; the NGC image carries neither at the versions the engine is
# tested with (numpy below 2, as pyproject.toml pins it). Those models run on the CPU
# (CPUExecutionProvider); the GPU serves seqrec when the native onnxruntime backend (with
# TensorRT) is chosen, see SEQREC_BACKEND in docker/README.md, and that backend is part of
# the NGC image already. ORT_PACKAGE=onnxruntime-gpu==1.31.1 installs the GPU wheel instead,
# for model.py variants that ask for the CUDA provider.
#
#   docker build -f docker/triton.Dockerfile --build-arg TRITON_VERSION=26.07 -t interest-explorer:triton docker

ARG TRITON_VERSION=26.07
FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3
ARG ORT_PACKAGE=onnxruntime==1.31.1
ARG NUMPY_PACKAGE=numpy==1.26.4
# Ubuntu 24.04 based images mark the system Python as externally managed; this image exists to
# extend it.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN (python3 -m pip --version >/dev/null 2>&1 || { apt-get update \
        && apt-get install -y --no-install-recommends python3-pip && rm -rf /var/lib/apt/lists/*; }) \
    && python3 -m pip install "$NUMPY_PACKAGE" "$ORT_PACKAGE" \
    && python3 -c "import numpy, onnxruntime; print('numpy', numpy.__version__, 'onnxruntime', onnxruntime.__version__)"
EXPOSE 8000 8001 8002
