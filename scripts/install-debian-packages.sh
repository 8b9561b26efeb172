#!/usr/bin/env bash
# Install the Debian packages batchscale uses, when running as root; otherwise say how.
#   dataset-fashion-mnist  Fashion-MNIST IDX files (fmnist_lstm, fmnist_cnn)
#   bible-kjv              the King James Bible (kjv_lstm_lm)
#   chromium               headless browser for the HTML report test (tests only)
set -euo pipefail
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
elif command -v apt-get >/dev/null; then
  echo "note: not root, so not installing ${missing[*]}; run: sudo apt-get install ${missing[*]}" >&2
  echo "      (workloads and tests that need them say so and skip; see docs/datasets.md)" >&2
else
  echo "note: no apt-get here; ${missing[*]} are Debian packages: see docs/datasets.md for other ways" >&2
fi
