#!/usr/bin/env bash
# One command on a fresh Debian/Ubuntu machine: installs what smolvm needs,
# builds it, builds the default image, then runs a short real demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
bash scripts/build.sh
SMOLVM=target/release/smolvm
# Put `smolvm` on PATH (it finds its static guest agent through the link).
if [ -w /usr/local/bin ]; then
  ln -sf "$PWD/target/release/smolvm" /usr/local/bin/smolvm
  echo "installed: /usr/local/bin/smolvm -> $PWD/target/release/smolvm" >&2
else
  echo "note: add $PWD/target/release to PATH to run 'smolvm' directly" >&2
fi
base=${SMOLVM_DEMO_BASE:-debian}
if ! "$SMOLVM" image list --json | grep -q '"name": "default"'; then
  echo "== building the default image (base: $base) ==" >&2
  "$SMOLVM" image build --name default --base "$base"
fi
demo=demo-$$
cleanup() { "$SMOLVM" sandbox delete "$demo" >/dev/null 2>&1 || true; }
trap cleanup EXIT
t0=$(date +%s.%N)
"$SMOLVM" sandbox create --name "$demo"
t1=$(date +%s.%N)
"$SMOLVM" sandbox exec "$demo" -- uname -a
t2=$(date +%s.%N)
"$SMOLVM" sandbox exec "$demo" -- sh -c 'echo hello from $(hostname); cat /etc/os-release 2>/dev/null | head -n1'
"$SMOLVM" sandbox list
awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN { printf "timings: create %.2fs, first exec %.3fs\n", b-a, c-b }'
