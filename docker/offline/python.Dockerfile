# Python 3.11 from Debian's packages, the stand-in for python:3.11-slim where no image registry is reachable.
#
#   docker build -f docker/offline/python.Dockerfile -t mlsd-python:3.11-bookworm docker
#
# A venv at /opt/venv is first on PATH, so `python` and `pip` behave as in the upstream image (Debian's own
# interpreter refuses `pip install` into /usr: PEP 668). The CA certificates in docker/certs/ (those of an
# intercepting proxy, copied there by docker/offline/build.sh) are trusted, so pip reaches the package index
# through the same proxy the host uses.
ARG BASE_IMAGE=mlsd-debian:bookworm
FROM ${BASE_IMAGE}

COPY certs/ /usr/local/share/ca-certificates/mlsd/
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && update-ca-certificates \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/python --version

# pip's vendored certifi bundle does not know a proxy's CA: point it at the system bundle, which does.
ENV PATH=/opt/venv/bin:$PATH LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1
CMD ["python3"]
