#!/usr/bin/env bash
# Installs the system packages mx needs to build, test and benchmark (Debian 12).
# Idempotent and quiet when everything is already present: apt packages, then the npm
# test peers (s3rver, azurite) installed globally.
set -euo pipefail

APT_PACKAGES=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git clang-format
  clang libclang-rt-14-dev
  # libraries
  libcurl4-openssl-dev libssl-dev libspdlog-dev libfmt-dev libcli11-dev
  nlohmann-json3-dev libgtest-dev libgmock-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libsqlite3-dev libhiredis-dev libyaml-cpp-dev libucx-dev
  # test and benchmark peers
  python3 python3-grpcio python3-protobuf python3-cryptography zsh nginx-light aria2 curl time procps openssl redis-server iperf3 iproute2 awscli fio
  # ... and the deployment checks (tests/integration/test_deploy.py): the official
  # Kubernetes client's models (kubectl: Debian's kubernetes-client, below)
  python3-yaml python3-kubernetes
  # ... and the Python package (python/): pybind11 for its extension, setuptools and pip
  # for `pip install ./python`, torch and numpy for its tests
  python3-pybind11 python3-dev python3-setuptools python3-pip python3-torch python3-numpy
)
# Debian's kubectl only where none is installed: kubernetes-client's /usr/bin/kubectl would
# clash with another package's (the Google Cloud SDK's kubectl, for one) and fail the install.
command -v kubectl >/dev/null 2>&1 || APT_PACKAGES+=(kubernetes-client)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # Packages like nginx try to start a system service on install; tests start their own.
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

NPM_PACKAGES=(s3rver@3 azurite@3)
NPM_BINARIES=(s3rver azurite-blob)
need_npm=0
for bin in "${NPM_BINARIES[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || need_npm=1
done
if [ "$need_npm" -eq 1 ]; then
  # Node.js and npm come with the machine image (not Debian's nodejs, which conflicts).
  command -v npm >/dev/null 2>&1 || { echo "install-deps: npm is missing; install Node.js 20+" >&2; exit 1; }
  echo "install-deps: npm install -g ${NPM_PACKAGES[*]}"
  npm install -g --no-audit --no-fund --loglevel=error "${NPM_PACKAGES[@]}" >/dev/null
fi

# Test-only oracles: the official AWS, Google and Azure SDKs' credential chains, which the
# credential tests run beside mx against the same stand-ins (tests/sdk_oracle, not shipped).
ORACLE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/sdk_oracle"
ORACLE_WANT="$(sha256sum "$ORACLE_DIR/package.json" | cut -d' ' -f1)"
if [ "$(cat "$ORACLE_DIR/node_modules/.mx-installed" 2>/dev/null)" != "$ORACLE_WANT" ]; then
  command -v npm >/dev/null 2>&1 || { echo "install-deps: npm is missing; install Node.js 20+" >&2; exit 1; }
  echo "install-deps: npm install (tests/sdk_oracle: the cloud SDKs' credential chains)"
  (cd "$ORACLE_DIR" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$ORACLE_WANT" > "$ORACLE_DIR/node_modules/.mx-installed"
fi
