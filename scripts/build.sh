#!/usr/bin/env bash
# Builds smolvm (release) and the static guest agent it puts into images.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p smolvm-cli
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --release --locked -q -p smolvm-agent --target x86_64-unknown-linux-gnu
test -x target/release/smolvm
test -x target/x86_64-unknown-linux-gnu/release/smolvm-agent
# smolvm finds the static agent there by itself (a host build of the
# workspace may put a dynamic one next to it, which it skips).
echo "built: target/release/smolvm, target/x86_64-unknown-linux-gnu/release/smolvm-agent (static)" >&2
