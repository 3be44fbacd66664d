# A stand-in for python:3.11-slim where no image registry is reachable (see docker/README.md,
# "Started for real: make stack-test"): Debian's Python 3.11 from a local Debian base, with a
# virtualenv first on PATH so that `pip install` works as in the official image.
#
#   podman build --network host -f docker/local/python.Dockerfile -t localhost/explore-python:3.11 docker/local
#   podman build --network host -f docker/Dockerfile --target worker \
#       --build-arg PYTHON_IMAGE=localhost/explore-python:3.11 -t interest-explorer:worker .

ARG DEBIAN_IMAGE=localhost/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/python
ENV PATH=/opt/python/bin:$PATH
CMD ["python"]
