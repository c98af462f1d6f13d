"""An exclusive lock on a host, held for as long as this side keeps a command's stdin open.

Two controllers compiling on one build host would overwrite each other's inputs and outputs in the
shared workdir. The lock is a directory (mkdir is atomic everywhere, macOS included, where flock(1)
is missing) made by a shell that then waits on its stdin: closing the channel, a dropped connection or
a killed controller all end that shell, whose trap removes the directory. A holder that died without
its trap (SIGKILL on the host) is detected by its pid and replaced; a holder we may not signal (EPERM:
another user's live process) is alive. A lock without a pid (its holder died between mkdir and writing it)
is reported at once with the command that clears it, not waited on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pipeline.errors import HostError
from pipeline.hosts.base import Transport, quote

_SCRIPT = """L={lock}; n=0; e=0
alive() {{ kill -0 "$1" 2>/dev/null || kill -0 "$1" 2>&1 | grep -qi 'not permitted'; }}
while ! mkdir "$L" 2>/dev/null; do
  h=$(cat "$L/pid" 2>/dev/null)
  if [ -n "$h" ] && ! alive "$h"; then rm -rf "$L"; continue; fi
  if [ -z "$h" ]; then e=$((e+1)); if [ $e -gt {pid_wait} ]; then echo NOPID; exit 76; fi; sleep 1; continue; fi
  if [ $n -eq 0 ]; then echo "WAITING ${{h:-?}}"; fi
  n=$((n+1)); if [ $n -gt {wait} ]; then echo TIMEOUT; exit 75; fi
  sleep 1
done
echo $$ > "$L/pid"
trap 'rm -rf "$L"' EXIT
trap 'rm -rf "$L"; exit 1' HUP INT TERM
echo LOCKED
cat > /dev/null
"""


PID_WAIT_S = 3  # a holder writes its pid right after mkdir: a lock still without one is left over


@contextmanager
def exclusive(
    transport: Transport, name: str, wait_s: float, on_wait: Callable[[str], None] = lambda _: None
) -> Iterator[None]:
    """Hold `<workdir>/<name>` on the host for the block; wait up to `wait_s` for another holder."""
    lock = transport.path(name)
    holder = transport.start(_SCRIPT.format(lock=quote(lock), wait=int(wait_s), pid_wait=PID_WAIT_S))
    try:
        line = holder.readline(timeout=wait_s + 30)
        if line.startswith("WAITING"):
            on_wait(f"{transport.name}: waiting for {lock}, held by pid {line.split()[-1]}")
            line = holder.readline(timeout=wait_s + 30)
        if line == "NOPID":
            raise HostError(
                transport.name,
                f"{lock} is held by no process: a holder was killed before it wrote its pid",
                hint=f"if nothing else works on {transport.name}, clear it there with: rm -rf {quote(lock)}",
            )
        if line != "LOCKED":
            raise HostError(
                transport.name,
                f"another controller still holds {lock} after {wait_s:.0f} s",
                hint="wait for that build to finish, or remove the directory if no build runs there",
            )
    except BaseException:
        holder.close()
        raise
    try:
        yield
    finally:
        holder.close()
