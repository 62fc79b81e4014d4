#!/usr/bin/env bash
# The reference web client in a real browser: two headless Chromium pages chat
# with end-to-end encryption through a real relay (tests/browser/e2ee.test.mjs).
# Installs Chromium and Node from Debian when they are missing.
# Usage: .ci/browser-test.sh [path/to/blindrelay]   (default target/debug/blindrelay)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/blindrelay}
[ -x "$bin" ] || { echo "browser test: no relay binary at $bin (build it first)" >&2; exit 1; }

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-dejavu-core)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

(cd tests/browser && npm ci --no-audit --no-fund --silent)
BLINDRELAY_BIN=$bin CHROMIUM=$(command -v chromium) node tests/browser/e2ee.test.mjs
