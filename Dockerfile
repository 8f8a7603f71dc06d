# The gatekeeper and its loader in one image:  docker build -t settlement-gatekeeper .
# Python dependencies are installed by scripts/install-python-deps, the script that
# scripts/install (and so CI) runs too: the image cannot drift from what the tests ran with
# (tests/unit/test_container.py checks that both call it).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies before code: this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
COPY scripts/install-python-deps scripts/
RUN scripts/install-python-deps /opt/venv
COPY README.md setup.py ./
COPY gatekeeper/ gatekeeper/
COPY loader/ loader/
RUN /opt/venv/bin/python -m pip install --no-cache-dir --disable-pip-version-check --no-deps .

# The final image: the interpreter, the virtual environment and the demo data; no compilers.
FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gatekeeper \
    && install -d -o 10001 -g 10001 /var/spool/gatekeeper
COPY --from=build /opt/venv /opt/venv
COPY demo/ /srv/demo/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEKEEPER_LISTEN=0.0.0.0:50051 \
    GATEKEEPER_METRICS_LISTEN=0.0.0.0:9464 \
    GATEKEEPER_LOG_FORMAT=json \
    GATEKEEPER_AUDIT_SPOOL_DIR=/var/spool/gatekeeper \
    GRPC_VERBOSITY=ERROR
USER 10001
EXPOSE 50051 9464
# SERVING means a registry snapshot is loaded and fresh: a readiness signal, not liveness.
# With mutual TLS, give the check a client certificate (gatekeeper health --tls-ca … --tls-cert … --tls-key …).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["gatekeeper", "health", "--target", "127.0.0.1:50051", "--timeout", "3"]
CMD ["gatekeeper", "serve"]
