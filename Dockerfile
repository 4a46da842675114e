# syntax=docker/dockerfile:1
# vllm-cache-sidecar: a Prometheus exporter next to vLLM.
#
#   docker build -t vllm-cache-sidecar:0.1.0 --build-arg VERSION=0.1.0 \
#     --build-arg REVISION="$(git rev-parse HEAD)" --build-arg CREATED="$(date -u +%FT%TZ)" .
#   docker run --rm -p 9490:9490 vllm-cache-sidecar:0.1.0 --target http://vllm:8000
#
# Two stages: "build" turns the source into a wheel plus the wheels of its dependencies and
# installs them, offline, into a virtualenv; the runtime stage copies only that virtualenv into a
# slim Python image. No compiler, pip or source tree ships in the final image. The same steps
# (pip wheel, fresh venv, pip install --no-index) run in CI: tests/integration/test_wheel_install.py.
#
# Runtime: numeric non-root user, nothing written to disk (bytecode compiled at build time), so
# it runs with readOnlyRootFilesystem and every capability dropped.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG VERSION=0.1.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
# The project's wheel and every dependency's wheel, then an offline install of exactly those.
RUN python -m pip wheel --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --no-index --find-links /wheels "vllm-cache-sidecar==${VERSION}" \
 && /opt/venv/bin/python -m pip uninstall --yes pip setuptools wheel \
 && /opt/venv/bin/python -m compileall -q /opt/venv \
 && /opt/venv/bin/vllm-cache-sidecar --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="vllm-cache-sidecar" \
      org.opencontainers.image.description="Prometheus exporter next to vLLM: is prefix caching working, and if not, why?" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/vllm-cache-sidecar/vllm-cache-sidecar" \
      org.opencontainers.image.documentation="https://github.com/vllm-cache-sidecar/vllm-cache-sidecar/blob/main/docs/deploy.md" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VLLM_SIDECAR_LISTEN=0.0.0.0:9490
COPY --from=build /opt/venv /opt/venv
# 65532: the conventional "nonroot" id; numeric so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
WORKDIR /tmp
EXPOSE 9490
# Liveness of the process: any HTTP answer on /healthz counts (401 when basic auth is on);
# HTTPS is tried when plain HTTP is refused (TLS on via --web-config).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import os,ssl,sys,urllib.request as r,urllib.error as e\nport=os.environ.get('VLLM_SIDECAR_LISTEN','0.0.0.0:9490').rpartition(':')[2]\nfor s in ('http','https'):\n    try:\n        r.urlopen(s+'://127.0.0.1:'+port+'/healthz',timeout=4,context=ssl._create_unverified_context()); sys.exit(0)\n    except e.HTTPError as x:\n        sys.exit(0 if x.code==401 else 1)\n    except Exception:\n        pass\nsys.exit(1)"]
ENTRYPOINT ["vllm-cache-sidecar", "run"]
