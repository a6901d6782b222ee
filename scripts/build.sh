#!/usr/bin/env bash
# Builds smolvm (release) and the static guest agent it puts into images.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p smolvm-cli
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --release --locked -q -p smolvm-agent --target x86_64-unknown-linux-gnu
test -x target/release/smolvm
test -x target/x86_64-unknown-linux-gnu/release/smolvm-agent
# The agent is looked up next to the smolvm binary first.
cp -f target/x86_64-unknown-linux-gnu/release/smolvm-agent target/release/smolvm-agent
echo "built: target/release/smolvm, target/release/smolvm-agent (static)" >&2
