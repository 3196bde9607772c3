# PostgreSQL 15 from Debian's packages, the stand-in for postgres:16-alpine where no image registry is reachable.
#
#   docker build -f docker/offline/postgres.Dockerfile -t mlsd-postgres:15 docker
#
# The entrypoint (postgres-entrypoint.sh) honours what our compose file uses of upstream's: POSTGRES_USER,
# POSTGRES_PASSWORD, POSTGRES_DB, PGDATA=/var/lib/postgresql/data, password (scram) auth from other
# containers, and `pg_isready` for the healthcheck. Version 15, not 16: bookworm has no 16 (a data volume
# written by one cannot be opened by the other; compose's volumes here are created fresh).
ARG BASE_IMAGE=mlsd-debian:bookworm
FROM ${BASE_IMAGE}

# Like upstream: install postgresql-common first and switch off the default cluster its package would create;
# the entrypoint creates the one cluster in PGDATA on first start.
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-common \
    && sed -ri 's/#(create_main_cluster) .*$/\1 = false/' /etc/postgresql-common/createcluster.conf \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && /usr/lib/postgresql/15/bin/postgres --version

COPY offline/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data LANG=C.UTF-8
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
