# One image for the three programs: logq-aggregator, logq-shipper and the logq CLI.
#   docker build -t logq .
#   docker run --rm logq logq-aggregator --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package needs (see .dockerignore): no tests, no venv, no warehouse.
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY shipper ./shipper
COPY aggregator ./aggregator
COPY athena ./athena
COPY cli ./cli
# The releases the suite last passed with (constraints.txt), as make test installs them.
RUN pip install -c constraints.txt . && rm -rf /src

# The aggregator runs unprivileged; its buffer (the WAL behind every ack) and the shipper's
# checkpoints live under /var/lib/logq, which compose mounts as named volumes. The directories are
# made here and owned by `logq` because Docker fills a new named volume from the image's
# directory, owner included: that is what makes compose's buffer volume writable. A host path gets
# no such copy (it is created root's): Kubernetes uses fsGroup, ECS a chown before the aggregator
# starts (deploy/README.md). The shipper needs root only to read /var/lib/docker/containers
# (compose sets `user: "0:0"` for it).
RUN useradd --system --uid 10001 --home-dir /var/lib/logq --shell /usr/sbin/nologin logq \
    && mkdir -p /var/lib/logq/buffer /var/lib/logq/shipper \
    && chown -R logq:logq /var/lib/logq
USER logq
WORKDIR /var/lib/logq

# Forward protocol, Prometheus metrics. Without LOGQ_WAREHOUSE (or --warehouse) the default CMD
# writes the warehouse to /var/lib/logq/logq-warehouse inside the container: set it.
EXPOSE 24224 9880
CMD ["logq-aggregator", "--listen", "0.0.0.0:24224", "--metrics-listen", "0.0.0.0:9880", \
     "--buffer-dir", "/var/lib/logq/buffer"]
