# Alertmanager from Debian's package (prometheus-alertmanager), for the compose profile `monitoring`. No image
# registry is needed: the base is any Debian bookworm image, a locally imported one included (see
# docker/prometheus.Dockerfile).
#
#   docker build -f docker/alertmanager.Dockerfile -t mlsd-alertmanager:0.25 docker
#
# Debian names the binary `prometheus-alertmanager`; the `alertmanager` link, the paths and `wget` match
# upstream's prom/alertmanager, so MLSD_ALERTMANAGER_IMAGE=prom/alertmanager:<tag> swaps it in unchanged.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

# policy-rc.d: the package's maintainer scripts must not try to start the daemon inside the build.
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus-alertmanager wget \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && ln -s /usr/bin/prometheus-alertmanager /usr/local/bin/alertmanager \
    && mkdir -p /alertmanager && chown prometheus:prometheus /alertmanager \
    && alertmanager --version

USER prometheus
WORKDIR /alertmanager
VOLUME /alertmanager
EXPOSE 9093
ENTRYPOINT ["/usr/local/bin/alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]
