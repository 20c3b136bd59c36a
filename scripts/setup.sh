#!/usr/bin/env bash
# Installs what Godwit needs to build and test on a fresh Debian 12 machine
# (run as root). The Rust toolchain (cargo) must already be there.
set -euo pipefail
need=()
# protobuf-compiler + libprotobuf-dev: the etcd-client crate compiles etcd's .proto files
# at build time (protoc and the well-known types in /usr/include/google/protobuf).
# chromium + chromium-driver: the dashboard's test drives a real headless browser over
# WebDriver (crates/godwit-cli/tests/dashboard.rs).
for pkg in gcc make python3 util-linux procps redis-server redis-tools etcd-server etcd-client iproute2 nginx protobuf-compiler libprotobuf-dev chromium chromium-driver; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian may start its own redis/etcd/nginx services on install. They are the
# machine's, not ours: tests start their own servers on their own ports and data
# directories, and never stop or kill anything they did not start.
command -v cargo >/dev/null || { echo "cargo not found: install the Rust toolchain (rustup) first" >&2; exit 1; }
