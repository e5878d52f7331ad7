#!/usr/bin/env bash
# Ensures the Debian packages given as arguments, e.g. (see the Makefile targets data and
# test-deps):
#   bash scripts/ensure_apt_packages.sh [--otherwise WHAT] PACKAGE...
# A package counts as present when what it provides is there (so a copy installed another
# way counts too):
#   dataset-fashion-mnist  /usr/share/datasets/fashion-mnist (offline Fashion-MNIST)
#   chromium               the chromium command (dashboard browser test)
#   chromium-driver        the chromedriver command (dashboard browser test)
#   postgresql             /usr/lib/postgresql/*/bin/initdb (multi-worker storage test)
#   any other name         dpkg lists it as installed
# Installs what is missing with apt-get when we are root or have password-less sudo;
# otherwise says what to run (and, where apt-get is missing altogether, the --otherwise
# text: what happens without the packages).
# Never fails the build: always exits 0 (but 2 on a usage error).
set -u
otherwise=""
if [ "${1:-}" = "--otherwise" ]; then
  if [ $# -lt 2 ]; then
    echo "usage: $0 [--otherwise WHAT] PACKAGE..." >&2
    exit 2
  fi
  otherwise="; $2"
  shift 2
fi
if [ $# -eq 0 ]; then
  echo "usage: $0 [--otherwise WHAT] PACKAGE..." >&2
  exit 2
fi

present() {
  case "$1" in
    dataset-fashion-mnist)
      ls /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz >/dev/null 2>&1 ;;
    chromium) command -v chromium >/dev/null 2>&1 ;;
    chromium-driver) command -v chromedriver >/dev/null 2>&1 ;;
    postgresql) ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 ;;
    *) dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed" ;;
  esac
}

need=()
for package in "$@"; do
  present "$package" || need+=("$package")
done
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: missing ${need[*]} and apt-get is not available$otherwise" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "note: missing ${need[*]}; run: sudo apt-get install -y ${need[*]}" >&2
    exit 0
  fi
fi
echo "installing ${need[*]} with apt-get ..."
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || {
  $SUDO apt-get update -q >/dev/null 2>&1
  $SUDO apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || \
    echo "note: apt-get install ${need[*]} failed; run it by hand" >&2
}
exit 0
