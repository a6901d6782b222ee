#!/usr/bin/env bash
# One command runs every test: installs what the tests need, builds, then
# runs the unit tests and the tests that boot real guests under QEMU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
bash scripts/build.sh
# Real guests keep a core busy while they boot: at most two tests at once.
export SMOLVM_TEST_AGENT_BIN="$PWD/target/x86_64-unknown-linux-gnu/release/smolvm-agent"
cargo test --release --locked --workspace -- --test-threads 2
