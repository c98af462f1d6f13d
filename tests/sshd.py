"""A real OpenSSH server on 127.0.0.1 for the tests: temporary host and user keys, sftp.

Started the way ansible/pylibssh's test suite does: a free loopback port, a private sshd_config, `sshd -D`.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.loopback import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
STANDINS = Path(__file__).resolve().parent / "standins"


@dataclass(frozen=True)
class SshServer:
    port: int
    user: str
    client_key: Path
    other_key: Path  # a key the server does not accept
    known_hosts: Path
    bin_dir: Path  # first on the PATH of every session: where a test puts a wrapper (a refusing rm)

    def host_entry(self, workdir: Path, **overrides: object) -> dict[str, object]:
        entry: dict[str, object] = {
            "kind": "ssh",
            "address": "127.0.0.1",
            "port": self.port,
            "user": self.user,
            "key": str(self.client_key),
            "known_hosts": str(self.known_hosts),
            "workdir": str(workdir),
            "retries": 0,
            "connect_timeout": 10,
            "min_free_gb": 0.01,
        }
        entry.update(overrides)
        return entry


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def _with_login_shell(command: list[str], root: Path, shell: str) -> list[str]:
    """`command` in a private mount namespace whose /etc/passwd gives this user `shell` as login shell:
    sshd runs every command as `<login shell> -c '<command>'`, as a Mac's sshd does with zsh. (Mounts made
    later outside, such as a test's tmpfs, are not seen inside: / is a private mount here.)"""
    if not Path(shell).exists():
        raise RuntimeError(f"{shell} not found: install it (tests/run.sh installs Debian's zsh)")
    user = getpass.getuser()
    lines = Path("/etc/passwd").read_text().splitlines()
    passwd = root / "passwd"
    passwd.write_text(
        "\n".join(":".join([*f.split(":")[:6], shell]) if f.split(":")[0] == user else f for f in lines) + "\n"
    )
    bind = 'mount --bind "$0" /etc/passwd && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", bind, str(passwd), *command]


def start_sshd(root: Path, login_shell: str | None = None) -> tuple[subprocess.Popen, SshServer]:
    """An sshd on a free loopback port; with `login_shell`, the user's login shell is that one for it.

    Sessions get an empty HOME of their own (sshd's SetEnv overrides the account's): bash run by sshd
    sources ~/.bashrc, which on this machine runs `pyenv init` (about a third of a second) for each of the
    hundreds of commands a remote test sends; a device's account has a home of its own, and the machine's
    root does not lend it its shell setup."""
    if not Path(SSHD).exists():
        raise RuntimeError("sshd not found: install openssh-server (.ci/run does)")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "client_key", "other_key"):
        _keygen(root / name)
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    bin_dir, home = root / "bin", root / "home"
    bin_dir.mkdir()
    home.mkdir()
    port = free_port()
    sftp = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server") if Path(p).exists()), None)
    config = root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {root / 'host_key'}",
                f"PidFile {root / 'sshd.pid'}",
                f"AuthorizedKeysFile {root / 'authorized_keys'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "UsePAM no",
                "MaxStartups 50",
                "LogLevel ERROR",
                f"Subsystem sftp {sftp or 'internal-sftp'}",
                f"SetEnv PATH={bin_dir}:/usr/local/bin:/usr/bin:/bin PYTHONPATH={STANDINS / 'python'} HOME={home}",
            ]
        )
        + "\n"
    )
    command = [SSHD, "-D", "-e", "-f", str(config)]
    if login_shell:
        command = _with_login_shell(command, root, login_shell)
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited: {process.stderr.read() if process.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError("sshd did not start listening within 15 s")
    host_key = (root / "host_key.pub").read_text().split()
    known = root / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    server = SshServer(port, getpass.getuser(), root / "client_key", root / "other_key", known, bin_dir)
    return process, server
