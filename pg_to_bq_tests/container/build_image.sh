#!/usr/bin/env bash
# Build the real ./Dockerfile with podman, on a local Debian base image.
#
# No container registry is reachable from CI, so the public base
# (python:3.11-slim-bookworm) is replaced, through the Dockerfile's BASE_IMAGE
# build argument, by an image made here:
#
#   1. debootstrap --variant=minbase bookworm + python3 + python3-venv
#      (the rootfs tarball is cached in $PG_TO_BQ_IMAGE_CACHE; delete it to
#      start from nothing);
#   2. `podman import` of that tarball               -> $DEBOOTSTRAP_IMAGE;
#   3. a one-layer image adding this host's CA bundle -> $BASE_IMAGE
#      (egress here goes through a TLS-intercepting proxy, so pip inside the
#      build must trust the host's CAs; a normal network needs none of this);
#   4. podman build --build-arg BASE_IMAGE=$BASE_IMAGE . -> $IMAGE.
#
# pip inside the build uses the plain PyPI index: the host's find-links and
# local indexes under /opt are not visible in the build containers.
#
# Needs root and the Debian packages: podman buildah runc debootstrap.
# Prints progress and timings on stderr; on stdout, two lines for the caller:
#   CONTAINERS_CONF=<the podman config to run the image with>
#   IMAGE=<the image built>
#
# Environment (all optional):
#   PG_TO_BQ_IMAGE          image to build              (localhost/pg-to-bq:test)
#   PG_TO_BQ_IMAGE_CACHE    cache dir for the rootfs    (/var/cache/pg_to_bq/container)
#   DEBIAN_MIRROR           debootstrap mirror          (first bookworm URI in apt's sources)
#   CONTAINERS_CONF         podman config; default: one written to the cache dir
#                           (runtime runc, ulimits this host allows)
#   PG_TO_BQ_BUILD_NETWORK  network for RUN steps       (podman's default)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
IMAGE="${PG_TO_BQ_IMAGE:-localhost/pg-to-bq:test}"
CACHE_DIR="${PG_TO_BQ_IMAGE_CACHE:-/var/cache/pg_to_bq/container}"
SUITE=bookworm
BASE_PACKAGES="python3,python3-venv,ca-certificates"
ROOTFS_TAR="$CACHE_DIR/debootstrap-$SUITE-minbase-$(echo "$BASE_PACKAGES" | tr ',' '+').tar"
DEBOOTSTRAP_IMAGE="localhost/pg-to-bq-debootstrap:$SUITE"
BASE_IMAGE="localhost/pg-to-bq-base:$SUITE"

log() { echo "build_image: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s; }

[ "$(id -u)" -eq 0 ] || die "must run as root (rootful podman, debootstrap)"
for tool in podman debootstrap runc; do
    command -v "$tool" >/dev/null || die "'$tool' not found; apt-get install podman buildah runc debootstrap"
done
mkdir -p "$CACHE_DIR"

# podman's defaults fail here: crun is not installed, and the default ulimits
# (nofile=1048576, nproc above 32768) are above what this kernel lets even root
# raise to ("error setting rlimit type 7/6: operation not permitted").
nofile="$(ulimit -Hn)"
[ "$nofile" = unlimited ] && nofile=1048576
ulimit_args=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=32768:32768")
if [ -z "${CONTAINERS_CONF:-}" ]; then
    export CONTAINERS_CONF="$CACHE_DIR/containers.conf"
    cat >"$CONTAINERS_CONF.tmp" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]

[engine]
runtime = "runc"
EOF
    mv "$CONTAINERS_CONF.tmp" "$CONTAINERS_CONF"
fi

debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    local uri
    # deb822 sources (URIs: ...) first, then one-line sources (deb URI suite ...).
    uri="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk -v suite="$SUITE" '
            /^URIs:/ {u=$2} /^Suites:/ {for (i=2;i<=NF;i++) if ($i==suite) {print u; exit}}
            /^$/ {u=""}')"
    if [ -z "$uri" ]; then
        uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | sed -E 's/\[[^]]*\]//' \
            | awk -v suite="$SUITE" '$1=="deb" && $3==suite {print $2; exit}')"
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

t_start="$(now)"

# 1. the debootstrap rootfs tarball (cached) -------------------------------------
if [ ! -s "$ROOTFS_TAR" ]; then
    mirror="$(debian_mirror)"
    log "debootstrap $SUITE (minbase + $BASE_PACKAGES) from $mirror"
    work="$(mktemp -d /var/tmp/pg-to-bq-rootfs.XXXXXX)"
    trap 'rm -rf "$work"' EXIT
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$work/rootfs" "$mirror" \
        >"$work/debootstrap.log" 2>&1 \
        || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    # What a slim image leaves out: package caches and lists.
    rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
    tar -C "$work/rootfs" --numeric-owner -cf "$ROOTFS_TAR.tmp" .
    mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf "$work"
    trap - EXIT
    podman rmi -f "$DEBOOTSTRAP_IMAGE" >/dev/null 2>&1 || true
fi
t_rootfs="$(now)"

# 2. import it ---------------------------------------------------------------------
if ! podman image exists "$DEBOOTSTRAP_IMAGE"; then
    log "podman import $ROOTFS_TAR -> $DEBOOTSTRAP_IMAGE"
    podman import --change 'CMD ["/bin/bash"]' "$ROOTFS_TAR" "$DEBOOTSTRAP_IMAGE" >/dev/null
fi

# 3. the base image: + this host's CA bundle (for the TLS-intercepting proxy) ------
ctx="$(mktemp -d /var/tmp/pg-to-bq-base.XXXXXX)"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
cat >"$ctx/Containerfile" <<EOF
FROM $DEBOOTSTRAP_IMAGE
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
EOF
podman build --pull=never --layers -q -t "$BASE_IMAGE" "${ulimit_args[@]}" "$ctx" >/dev/null
rm -rf "$ctx"
t_base="$(now)"

# 4. the real Dockerfile ---------------------------------------------------------
network_args=()
[ -n "${PG_TO_BQ_BUILD_NETWORK:-}" ] && network_args=(--network "$PG_TO_BQ_BUILD_NETWORK")
log "podman build $REPO_ROOT/Dockerfile (BASE_IMAGE=$BASE_IMAGE) -> $IMAGE"
# Each output line is prefixed with the seconds since the build started.
build_s0=$SECONDS
podman build --pull=never --layers \
    "${ulimit_args[@]}" "${network_args[@]}" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    -t "$IMAGE" -f "$REPO_ROOT/Dockerfile" "$REPO_ROOT" 2>&1 \
    | while IFS= read -r line; do printf '[%4ds] %s\n' "$((SECONDS - build_s0))" "$line"; done >&2
t_end="$(now)"

log "times: rootfs $((t_rootfs - t_start))s, base image $((t_base - t_rootfs))s," \
    "Dockerfile build $((t_end - t_base))s, total $((t_end - t_start))s"
echo "CONTAINERS_CONF=$CONTAINERS_CONF"
echo "IMAGE=$IMAGE"
