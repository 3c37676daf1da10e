#!/usr/bin/env bash
# Install pg_to_bq with everything its test suite needs, on Debian/Ubuntu:
#   - Debian packages for the test tiers (Chromium for the UI test, bubblewrap for the
#     Lambda sandbox, podman/buildah/debootstrap for the container image build, PostgreSQL 15
#     for the TLS tests: a server with ssl=on and only hostssl rules);
#   - a virtual environment in .venv with the package, its test extras and the
#     benchmark's comparison backend (connectorx, the `bench` extra).
# Usage: bash install.sh            (as root, or with sudo available)
#        PG_TO_BQ_SKIP_APT=1 bash install.sh   (Python parts only)
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(
  chromium fonts-noto-cjk
  bubblewrap
  podman buildah runc debootstrap uidmap slirp4netns fuse-overlayfs
  postgresql-15
)

if [ "${PG_TO_BQ_SKIP_APT:-0}" != "1" ]; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,bench]'
echo "installed: activate with '. .venv/bin/activate', then run 'pg-to-bq demo' or '.venv/bin/pytest'"
