#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build cbec: the bundled librdkafka needs
# cmake and the OpenSSL, zlib, zstd, SASL and curl headers. Does nothing when present.
set -euo pipefail
need=()
command -v cmake >/dev/null || need+=(cmake)
for p in libssl-dev zlib1g-dev libzstd-dev libsasl2-dev libcurl4-openssl-dev pkg-config; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: Rust (cargo) is required: https://rustup.rs" >&2; exit 1; }
