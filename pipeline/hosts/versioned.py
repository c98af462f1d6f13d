"""A folder on a host replaced all at once: each version is filled in its own folder, `<link>.sets/<id>`,
and `<link>` is a symlink switched to it with one rename(2). Readers (the device's server, caption,
smoke-test) see the old version or the new one, never a mix, whenever the writer is killed.

The current and the previous version are kept (a server started before the switch still reads its own);
older ones are removed after a switch. A folder left by a killed run is reused by the next one.
"""

from __future__ import annotations

import posixpath
import uuid
from dataclasses import dataclass

from pipeline.hosts.base import Transport, quote

LEGACY = "before-sets"  # where a plain folder from before versioned sets is kept, as the previous version


@dataclass(frozen=True)
class VersionedFolder:
    link: str  # e.g. /home/pi/clip/models: a symlink to models.sets/<id>

    @property
    def sets(self) -> str:
        return f"{self.link}.sets"

    def folder(self, version: str) -> str:
        return f"{self.sets}/{version}"

    def prepare(self, transport: Transport, version: str, names: list[str]) -> str:
        """The version's folder, holding hard links to the files the current version has under the same
        names: an upload that skips files whose sha256 matches then sends only what changed."""
        folder = self.folder(version)
        lines = [
            f"mkdir -p {quote(folder)}",
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
        """Point the link at the version (one rename), then remove all but it and the one it replaces.
        A link that is still a plain folder (fetch before versioned sets) is moved into the sets first."""
        temporary = f"{self.link}.tmp-{uuid.uuid4().hex[:8]}"
        target = f"{posixpath.basename(self.link)}.sets/{version}"  # relative: the folder can move
        legacy = quote(self.folder(LEGACY))
        lines = [
            "set -e",
            f'previous=$(basename "$(cd {quote(self.link)} 2>/dev/null && pwd -P || echo none)")',
            f"if [ -d {quote(self.link)} ] && [ ! -L {quote(self.link)} ]; then",
            f"  previous={LEGACY}",
            f"  rm -rf {legacy} && mv {quote(self.link)} {legacy}",
            "fi",
            f"ln -sfn {quote(target)} {quote(temporary)}",
            f"mv -Tf {quote(temporary)} {quote(self.link)}",
            f"cd {quote(self.sets)}",
            f'for old in *; do [ "$old" = {quote(version)} ] || [ "$old" = "$previous" ] || rm -rf -- "$old"; done',
        ]
        transport.check("\n".join(lines), what=f"switching {self.link} to {target}")
