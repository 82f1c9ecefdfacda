# syntax=docker/dockerfile:1
#
# leadbridge: one image for the web (`serve`, the default) and the worker (`worker`).
#
#   docker build -t leadbridge:dev .
#   docker run --read-only --tmpfs /tmp -p 8000:8000 --env-file .env \
#     -v "$PWD/mappings:/etc/leadbridge/mappings:ro" leadbridge:dev            # web
#   docker run --read-only --tmpfs /tmp --env-file .env \
#     -v "$PWD/mappings:/etc/leadbridge/mappings:ro" leadbridge:dev worker     # worker
#
# The builder stage turns the source into wheels (leadbridge and every dependency); the final
# stage installs them from that local wheelhouse into /opt/venv and nothing else: no compiler,
# no pip cache, no source tree. tests/test_deploy_wheel.py runs these same RUN lines outside
# Docker, so keep the build and install steps in the two RUN instructions marked below.

ARG PYTHON_VERSION=3.11.16

FROM python:${PYTHON_VERSION}-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY bridge ./bridge

# [build] the wheel of this repo and of every dependency, into /wheels, at the versions CI tested
# (constraints.txt, written by `./dev lock`)
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip wheel --constraint constraints.txt --wheel-dir /wheels .


FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="leadbridge" \
      org.opencontainers.image.description="Async webhook bridge: form providers and CRMs in, Connect API leads out" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:${PYTHON_VERSION}-slim-bookworm"

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    BRIDGE_HOST=0.0.0.0 \
    BRIDGE_PORT=8000 \
    BRIDGE_WORKER_PROBE_PORT=8001 \
    BRIDGE_MAPPINGS=/etc/leadbridge/mappings \
    BRIDGE_DATA_DIR=/tmp/leadbridge \
    BRIDGE_LOG_FORMAT=json

# [install] a venv without pip, filled from the builder's wheelhouse only (--no-index); the
# wheelhouse is bind-mounted for this step, so it never becomes a layer of the image.
# pip compiles the bytecode here, so a read-only root file system costs nothing at run time.
# It also writes the -OO bytecode that `leadbridge worker` runs with (no docstrings in memory,
# bridge/launch.py); without it the worker would run as started.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/venv \
    && python -m pip --python /opt/venv/bin/python install --no-cache-dir --no-index \
       --find-links=/wheels /wheels/leadbridge-*.whl \
    && /opt/venv/bin/python -m compileall -q -j 0 -o 2 /opt/venv/lib

# The base image ships the standard library without bytecode: compile it (plain and -OO) here,
# or every start compiles what it imports, and the worker's -OO check finds none.
RUN python -m compileall -q -j 0 -o 0 -o 2 -x '/(test|tests|idle_test)/|/site-packages/' \
    "$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"

# A fixed, unprivileged uid/gid (Kubernetes runAsUser: 10001) that owns nothing in the image:
# the process can write to /tmp (BRIDGE_DATA_DIR, mount a tmpfs or emptyDir there) and nowhere else.
RUN groupadd --system --gid 10001 leadbridge \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin leadbridge \
    && mkdir -p /etc/leadbridge/mappings

VOLUME ["/tmp"]
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000 8001

# Docker/Compose only (Kubernetes uses its own probes): alive if the web port or the worker
# probe port answers /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os,sys,urllib.request as u\nfor p in (os.environ.get('BRIDGE_PORT','8000'),os.environ.get('BRIDGE_WORKER_PROBE_PORT','8001')):\n  try:\n    u.urlopen(f'http://127.0.0.1:{p}/healthz',timeout=3); sys.exit(0)\n  except Exception: pass\nsys.exit(1)"]

ENTRYPOINT ["leadbridge"]
CMD ["serve"]
