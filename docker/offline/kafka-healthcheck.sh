#!/bin/bash
# Healthcheck of the offline broker image: one Kafka ApiVersions (v0) round trip, with bash's /dev/tcp, so the
# image needs no JVM and no Python. Installed as /opt/kafka/bin/kafka-broker-api-versions.sh because that is
# what docker-compose.yml's healthcheck runs against apache/kafka; only `--bootstrap-server HOST:PORT` is read.
# Exit 0 when the broker answers our correlation id with error code 0.
set -u
server=localhost:9092
while [ $# -gt 0 ]; do
    case "$1" in
        --bootstrap-server) server=$2; shift 2 ;;
        *) shift ;;
    esac
done
host=${server%:*}
port=${server##*:}
exec 3<>"/dev/tcp/$host/$port" || exit 1
# size 12 | api_key 18 (ApiVersions) | api_version 0 | correlation_id 7 | client_id "hc"
printf '\x00\x00\x00\x0c\x00\x12\x00\x00\x00\x00\x00\x07\x00\x02hc' >&3
# response: size (4 bytes) | correlation_id (4) | error_code (2)
reply=$(timeout 5 head -c 10 <&3 | od -An -tx1 | tr -d ' \n')
exec 3>&-
[ "${reply:8:12}" = "000000070000" ]
