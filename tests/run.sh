#!/usr/bin/env bash
# README's test command: installs what the tests need from Debian's packages when it can (a real sshd
# for the remote-stage tests, Docker's engine for the build host's, Chromium for the build report's
# page, nginx in front of a fleet's servers, zsh as a Mac's login shell,
# systemd-analyze to check the server's unit file, Debian's python3-venv for a device's virtualenv as
# on Raspberry Pi OS), then runs the whole suite. The tests start their own sshd and dockerd and stop them at the end.
# Extra arguments go to pytest (e.g. `bash tests/run.sh -k server`).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
[ -x /usr/sbin/sshd ] && command -v ssh-keygen >/dev/null || missing+=(openssh-server openssh-client)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
command -v dockerd >/dev/null || [ -x /usr/sbin/dockerd ] || missing+=(docker.io)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v zsh >/dev/null || missing+=(zsh)
command -v systemd-analyze >/dev/null || missing+=(systemd)
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
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
# pytest exits non-zero (5) when it collects no test: that fails this command too. The tests run on
# TEST_WORKERS pytest-xdist workers (default 4: most tests wait on sshd, dockerd and servers more than they
# compute); tests marked xdist_group("name") share one worker (--dist loadgroup). TEST_WORKERS=0: one
# process, as plain pytest.
exec python3 -m pytest -q -n "${TEST_WORKERS:-4}" --dist loadgroup -p no:benchmark "$@"
