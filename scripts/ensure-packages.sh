# shellcheck shell=bash
# Sourced by scripts/test.sh and scripts/bench.sh.
# ensure_packages WHY CMD:PACKAGE...: installs (apt-get, as root or via
# sudo) the Debian package of every command that is not on PATH.
ensure_packages() {
  local why=$1; shift
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  echo "==> installing ${need[*]} ($why)"
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
}
