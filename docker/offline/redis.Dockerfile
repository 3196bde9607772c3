# Redis from Debian's redis-server (7.0), the stand-in for redis:7-alpine where no image registry is reachable.
#
#   docker build -f docker/offline/redis.Dockerfile -t mlsd-redis:7.0 docker
#
# Like upstream's image: `redis-server` as the command, /data as the working directory (RDB snapshots land
# there), `redis-cli` for the healthcheck, and protected mode off (it would refuse every client from another
# container, since no password is set; upstream builds Redis with it off for the same reason).
ARG BASE_IMAGE=mlsd-debian:bookworm
FROM ${BASE_IMAGE}

# policy-rc.d: the package's maintainer scripts must not try to start the daemon inside the build.
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && mkdir -p /data && chown redis:redis /data \
    && redis-server --version

USER redis
WORKDIR /data
VOLUME /data
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no", "--dir", "/data"]
