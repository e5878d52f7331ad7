#!/usr/bin/env bash
# System packages the test suite uses: Fashion-MNIST (offline data), headless Chromium and
# its driver (dashboard browser test), PostgreSQL (multi-worker storage test).
# Installs what is missing when we are root or have password-less sudo; otherwise says
# what to run (the tests that need a missing package skip with that reason).
set -u
need=()
ls /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz >/dev/null 2>&1 || need+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "note: missing ${need[*]}; run: sudo apt-get install -y ${need[*]}" >&2
    exit 0
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: missing ${need[*]} and no apt-get; the tests needing them will skip" >&2
  exit 0
fi
echo "installing ${need[*]} with apt-get ..."
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || {
  $SUDO apt-get update -q >/dev/null 2>&1
  $SUDO apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || \
    echo "note: apt-get install ${need[*]} failed; run it by hand" >&2
}
exit 0
