#!/usr/bin/env bash
# Make sure the system tools the tests use are installed.
# Arguments: command:debian-package pairs. As root: apt-get install what is missing.
# Not root: print the command to run; under CI=true a missing tool is a failure.
set -euo pipefail
missing_pkgs=()
missing_cmds=()
for pair in "$@"; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
    missing_pkgs+=("$pkg"); missing_cmds+=("$cmd")
  fi
done
[ ${#missing_pkgs[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then
  echo "installing system tools: ${missing_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing_pkgs[@]}" >/dev/null
  exit 0
fi
echo "missing system tools: ${missing_cmds[*]}"
echo "install them with:  sudo apt-get install -y ${missing_pkgs[*]}"
if [ "${CI:-}" = "true" ]; then
  exit 1
fi
echo "(tests that need them will be skipped)"
