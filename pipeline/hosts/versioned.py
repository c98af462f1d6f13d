"""A folder of ours on a host, replaced all at once, inside a folder that may be someone else's.

The parent (a device's models dir) may be shared: the manual puts CLIP into the Stable Diffusion server's own
`models/`. We own one folder in it, `<parent>/<name>`, made by us and marked so (a folder of that name without
our marker is refused, never taken over). Inside it each version is filled in `sets/<id>` and `current`, a
symlink, is switched to it with one rename(2): readers (the device's server, caption, smoke-test) see the old
version or the new one, never a mix, whenever the writer is killed. The current and the previous version are
kept (a server started before the switch still reads its own); older ones are removed after a switch, but
only sets we made (each carries a marker); anything else found there stays. Nothing outside the owned folder
is ever moved or removed, except to undo the layout of older releases (see `_MIGRATE`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pipeline.errors import HostError
from pipeline.files import OWNER_MARKER  # in the owned folder and in each set we made
from pipeline.hosts.base import Transport, quote

NOT_OURS = 3  # exit code of a script that found a folder it must not touch

# Releases before the owned folder made `<parent>` itself a symlink to `<parent>.sets/<id>` and moved a plain
# folder there to `<parent>.sets/before-sets`: the user's folder is put back where it was, and the old sets
# (each holding our manifest.json) are removed. Anything else in `<parent>.sets` stays.
_MIGRATE = """P={parent}
if [ -L "$P" ] && [ -d "$P.sets" ]; then
  t=$(readlink "$P")
  case "$t" in
    "$(basename "$P").sets/"*)
      if [ -f "$P.sets/${{t#*.sets/}}/manifest.json" ]; then
        rm "$P"
        if [ -d "$P.sets/before-sets" ]; then mv "$P.sets/before-sets" "$P"; else mkdir "$P"; fi
        for old in "$P.sets"/*; do
          if [ -d "$old" ] && [ ! -L "$old" ] && [ -f "$old/manifest.json" ]; then rm -rf -- "$old"; fi
        done
        rmdir "$P.sets" 2>/dev/null || true
        echo "MIGRATED"
      fi;;
  esac
fi
"""

_CLAIM = """R={root}; M="$R/{marker}"
mkdir -p {parent}
if [ ! -e "$R" ] && [ ! -L "$R" ] && mkdir "$R" 2>/dev/null; then echo "{owner}" > "$M"; fi
n=0
while [ -d "$R" ] && [ ! -L "$R" ] && [ ! -f "$M" ] && [ $n -lt 3 ]; do sleep 1; n=$((n+1)); done
if [ -L "$R" ] || [ ! -d "$R" ] || [ ! -f "$M" ]; then exit {not_ours}; fi
"""


@dataclass(frozen=True)
class VersionedFolder:
    parent: str  # e.g. /home/pi/sd/models: may hold the user's own files
    name: str  # the folder we own in it

    @property
    def root(self) -> str:
        return f"{self.parent}/{self.name}"

    @property
    def link(self) -> str:
        """The symlink readers open: always the complete current version."""
        return f"{self.root}/current"

    @property
    def lock(self) -> str:
        return f"{self.root}/.lock"

    def folder(self, version: str) -> str:
        return f"{self.root}/sets/{version}"

    def claim(self, transport: Transport) -> bool:
        """Make the owned folder (and the parent when missing), or refuse one we did not make. Returns
        whether an older release's layout was undone on the way."""
        script = _MIGRATE.format(parent=quote(self.parent)) + _CLAIM.format(
            root=quote(self.root),
            marker=OWNER_MARKER,
            parent=quote(self.parent),
            owner=f"made by invoke fetch; holds the model sets it switches between ({self.name})",
            not_ours=NOT_OURS,
        )
        result = transport.run(script)
        if result.exit_code == NOT_OURS:
            raise HostError(
                transport.name,
                f"{self.root} exists and was not made by this pipeline; it is left as it is",
                hint=f"rename or move {self.root}, or set device.models_dir to another folder",
            )
        if not result.ok:
            raise HostError(
                transport.name,
                f"making {self.root} failed (exit {result.exit_code})",
                command=script,
                exit_code=result.exit_code,
                tail=result.tail(),
            )
        return "MIGRATED" in result.stdout

    def prepare(self, transport: Transport, version: str, names: list[str]) -> str:
        """The version's folder, marked as ours, holding hard links to the files the current version has
        under the same names: an upload that skips files whose sha256 matches then sends only what changed."""
        folder = self.folder(version)
        lines = [
            f"mkdir -p {quote(folder)} && touch {quote(f'{folder}/{OWNER_MARKER}')}",
            f"new=$(cd {quote(folder)} && pwd -P)",
            f"current=$(cd {quote(self.link)} 2>/dev/null && pwd -P || true)",
            'if [ -z "$current" ] || [ "$current" = "$new" ]; then exit 0; fi',
            'share() { [ -f "$current/$1" ] && [ ! -e "$new/$1" ] && mkdir -p "$(dirname "$new/$1")" '
            '&& ln "$current/$1" "$new/$1" 2>/dev/null || true; }',
            *(f"share {quote(name)}" for name in names),
        ]
        transport.check("\n".join(lines), what=f"preparing {folder}")
        return folder

    def switch(self, transport: Transport, version: str) -> None:
        """Point the link at the version (one rename), then remove the sets we made other than it and the
        one it replaces."""
        temporary = f"current.tmp-{uuid.uuid4().hex[:8]}"
        lines = [
            "set -e",
            f"cd {quote(self.root)}",
            f"if [ -e current ] && [ ! -L current ]; then exit {NOT_OURS}; fi",
            'previous=$(basename "$(readlink current 2>/dev/null || echo none)")',
            f"ln -sfn {quote(f'sets/{version}')} {temporary}",  # relative: the folder can move
            f"mv -Tf {temporary} current",
            "cd sets",
            "for old in *; do",
            f'  [ "$old" = {quote(version)} ] || [ "$old" = "$previous" ] || [ -L "$old" ] || '
            f'[ ! -f "$old/{OWNER_MARKER}" ] || rm -rf -- "$old"',
            "done",
        ]
        transport.check(
            "\n".join(lines),
            what=f"switching {self.link} to sets/{version}",
            hint=f"{self.link} must be the symlink fetch made: move whatever is there away",
        )
