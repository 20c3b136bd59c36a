#!/usr/bin/env bash
# Runs every Godwit test: unit, image-format, end to end on real processes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2
