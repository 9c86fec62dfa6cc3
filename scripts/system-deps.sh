#!/usr/bin/env bash
# System packages the test suite needs, on Debian or Ubuntu: Chromium, which the HTML-report test opens
# headless, and Fashion-MNIST (the ViT observer's data, under /usr/share/datasets/fashion-mnist/). Run
# once per machine (root, or a user with sudo). Elsewhere, install any Chromium and put it on PATH as
# `chromium`, and point TOKENCODEC_FASHION_MNIST at a folder with the four idx .gz files.
set -euo pipefail
packages=(chromium dataset-fashion-mnist)
missing=()
# `dpkg -s` succeeds for a removed package whose config files remain, so ask for the installed state
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages present: ${packages[*]}"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
command -v chromium >/dev/null || { echo "chromium was installed but is not on PATH" >&2; exit 1; }
