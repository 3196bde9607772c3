# Prometheus from Debian's package, for the compose profiles `monitoring` and `observability`. No image registry
# is needed: the base is any Debian bookworm image, a locally imported one included
# (debootstrap --variant=minbase bookworm ROOTFS && tar -C ROOTFS -c . | docker import - debian:bookworm-slim).
#
#   docker build -f docker/prometheus.Dockerfile -t mlsd-prometheus:2.42 docker
#
# Same entrypoint, default flags, paths and `wget` healthcheck as upstream's prom/prometheus, so
# MLSD_PROMETHEUS_IMAGE=prom/prometheus:<tag> swaps it in without touching docker-compose.yml.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

# policy-rc.d: the package's maintainer scripts must not try to start the daemon inside the build.
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && mkdir -p /prometheus && chown prometheus:prometheus /prometheus \
    && prometheus --version

USER prometheus
WORKDIR /prometheus
VOLUME /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
