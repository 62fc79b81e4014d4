#!/usr/bin/env bash
# Runs one fuzz target for a limited time, starting from the checked-in seeds.
#
#   fuzz/run.sh <ws_frames|token_check> [seconds, default 60] [libFuzzer options...]
#
# Uses the nightly toolchain when rustup has one, otherwise (or when
# RUSTC_BOOTSTRAP=1 is already set) the default toolchain with
# RUSTC_BOOTSTRAP=1: cargo-fuzz needs nightly-only flags.
# New inputs go to fuzz/corpus/<target>/, crashes to fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"

target=${1:?usage: fuzz/run.sh <ws_frames|token_check> [seconds] [libFuzzer options...]}
secs=${2:-60}
shift $(($# < 2 ? $# : 2))

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is required: cargo install cargo-fuzz" >&2
  exit 1
fi
toolchain=()
if [ "${RUSTC_BOOTSTRAP:-}" != 1 ] && cargo +nightly --version >/dev/null 2>&1; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi

mkdir -p "corpus/$target"
exec cargo "${toolchain[@]}" fuzz run "$target" "corpus/$target" "seeds/$target" -- \
  -max_total_time="$secs" "$@"
