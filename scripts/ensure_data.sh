#!/usr/bin/env bash
# Makes the offline Fashion-MNIST copy available (Debian package dataset-fashion-mnist).
# Installs it with apt when missing and we are root or have password-less sudo;
# otherwise says exactly what to run. Never fails the build: the loader also tries
# an explicit path and keras' own downloader, and reports everything it tried.
set -u
DIR=/usr/share/datasets/fashion-mnist
if ls "$DIR"/train-images-idx3-ubyte.gz >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: $DIR is missing and apt-get is not available; the loader will try keras' downloader or LRF_OPTUNA_DATA." >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "note: Fashion-MNIST is not installed. Run:  sudo apt-get install -y dataset-fashion-mnist" >&2
    exit 0
  fi
fi
echo "installing dataset-fashion-mnist with apt-get ..."
$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || {
  $SUDO apt-get update -q >/dev/null 2>&1
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
    echo "note: apt-get install dataset-fashion-mnist failed; run it by hand." >&2
}
exit 0
