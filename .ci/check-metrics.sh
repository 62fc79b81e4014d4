#!/usr/bin/env bash
# The metrics exposition of a live relay passes `promtool check metrics`, and
# its labels are only the aggregate ones (PROTOCOL.md section 7: no label
# carries a room, member, IP or token).
# Usage: .ci/check-metrics.sh [path/to/blindrelay]   (default target/debug/blindrelay)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/blindrelay}
[ -x "$bin" ] || { echo "check-metrics: no relay binary at $bin (build it first)" >&2; exit 1; }

if ! command -v promtool >/dev/null 2>&1; then
  echo "== installing promtool (Debian package prometheus)"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HOST=127.0.0.1 PORT=$port LOG_LEVEL=warn CONFIG_DIR=/nonexistent "$bin" >/tmp/blindrelay-metrics-check.log 2>&1 &
relay=$!
trap 'kill $relay 2>/dev/null || true' EXIT

exposition=$(python3 - "$port" <<'PY'
import sys, time, urllib.request, urllib.error
port = sys.argv[1]
base = f"http://127.0.0.1:{port}"
for _ in range(100):
    try:
        urllib.request.urlopen(base + "/live", timeout=1).read()
        break
    except Exception:
        time.sleep(0.05)
else:
    sys.exit("the relay did not start")
# Some traffic, so that the HTTP series exist: a room, a 404, the probes.
urllib.request.urlopen(urllib.request.Request(base + "/v1/rooms", method="POST"), timeout=2).read()
for path in ("/health", "/ready", "/nowhere"):
    try:
        urllib.request.urlopen(base + path, timeout=2).read()
    except urllib.error.HTTPError:
        pass
print(urllib.request.urlopen(base + "/metrics", timeout=2).read().decode())
PY
)

echo "$exposition" | promtool check metrics
echo "promtool check metrics: ok ($(echo "$exposition" | grep -c '^# TYPE') metric families)"

echo "$exposition" | python3 -c '
import re, sys
allowed = {"reason", "endpoint", "method", "status", "le", "version"}
bad = set()
for line in sys.stdin:
    if line.startswith("#") or "{" not in line:
        continue
    for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)=\"", line.split("}")[0]):
        if label not in allowed:
            bad.add(label)
if bad:
    sys.exit("labels outside the aggregate set: " + ", ".join(sorted(bad)))
print("metric labels: only " + ", ".join(sorted(allowed)))
'
