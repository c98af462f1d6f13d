#!/usr/bin/env bash
# README's test command: installs what the tests need from Debian's packages when it can (a real sshd
# for the remote-stage tests, Docker's engine for the build host's, Chromium for the build report's
# page, nginx in front of a fleet's servers), then runs the whole suite. The tests start their own sshd and dockerd and stop them at the end.
# Extra arguments go to pytest (e.g. `bash tests/run.sh -k server`).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
[ -x /usr/sbin/sshd ] && command -v ssh-keygen >/dev/null || missing+=(openssh-server openssh-client)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
command -v dockerd >/dev/null || [ -x /usr/sbin/dockerd ] || missing+=(docker.io)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    sudo=()
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo=(sudo)
  else
    echo "error: the tests need ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "installing ${missing[*]} (Debian packages the tests use)"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# pytest exits non-zero (5) when it collects no test: that fails this command too.
exec python3 -m pytest -q "$@"
