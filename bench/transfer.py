"""Transfer: our upload (pipeline/hosts/sync.py: checksummed, atomic) of a 300 MB artifact over loopback
SSH vs OpenSSH's scp of the same file, against a real sshd started for the run (tests/sshd.py).

Ours includes what makes it safe: hashing the file on both ends and the rename into place. scp is timed
with its default cipher and, for a like-for-like figure, with the AES-GCM cipher our stream prefers.
Interleaved rounds; medians. Target: ours >= 0.7x scp's throughput.

    python bench/transfer.py [--mb 300] [--rounds 5] [--json]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from harness import arguments, emit, verdict

from pipeline.hosts.openssh import PREFERRED_CIPHERS
from pipeline.hosts.ssh import SshTransport
from pipeline.hosts.sync import upload
from stages.config import Host
from tests.sshd import start_sshd

TARGET_RATIO = 0.7


def main() -> None:
    args = arguments(__doc__, mb=300, rounds=5)

    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        root = Path(tmp)
        artifact = root / "model.axmodel"
        with artifact.open("wb") as handle:  # incompressible, as compiled weights are
            for _ in range(args.mb):
                handle.write(os.urandom(1024 * 1024))
        (root / "sshd").mkdir()
        process, server = start_sshd(root / "sshd")
        try:
            figures = _measure(server, artifact, root / "remote", args.rounds)
        finally:
            process.terminate()
            process.wait(10)
    figures["mb"] = args.mb
    emit(
        figures,
        args.json,
        f"upload of {args.mb} MB over loopback SSH, median of {args.rounds} interleaved rounds",
        ("method", "median s", "MB/s", "ours / it"),
        [
            (name, f"{r['median_s']:.2f}", f"{r['mb_per_s']:.0f}", f"{r['ours_ratio']:.2f}")
            for name, r in figures["methods"].items()
        ],
        f"target: ours >= {TARGET_RATIO}x scp (default cipher): {verdict(figures['meets_target'])}",
    )


def _measure(server, artifact: Path, remote_dir: Path, rounds: int) -> dict:
    host = Host(**server.host_entry(remote_dir))
    transport = SshTransport.connect("bench", host)
    target = f"{remote_dir}/model.axmodel"

    def scp(*options: str) -> None:
        command = ["scp", "-q", "-P", str(server.port), "-i", str(server.client_key), *options]
        command += ["-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
        subprocess.run([*command, str(artifact), f"{server.user}@127.0.0.1:{remote_dir}/scp.bin"], check=True)

    def ours() -> None:
        transport.run(f"rm -f {target}")  # a fresh upload every round, never "already there"
        summary = upload(transport, {artifact: target})
        assert summary.sent == (target,)

    def sftp_only() -> None:
        transport.run(f"rm -f {target}")
        transport.put(artifact, target)

    methods = {
        "ours (ssh stream, sha256 both ends)": ours,
        "scp, default cipher": scp,
        "scp -c aes128-gcm": lambda: scp("-c", PREFERRED_CIPHERS.split(",")[0]),
        "paramiko SFTP put alone (old path)": sftp_only,
    }
    samples: dict[str, list[float]] = {name: [] for name in methods}
    try:
        for _ in range(rounds):
            for name, run in methods.items():
                started = time.perf_counter()
                run()
                samples[name].append(time.perf_counter() - started)
    finally:
        transport.close()
    mb = artifact.stat().st_size / 1e6
    ours_s = statistics.median(samples["ours (ssh stream, sha256 both ends)"])
    rows = {
        name: {
            "median_s": round(statistics.median(s), 3),
            "mb_per_s": round(mb / statistics.median(s), 1),
            "ours_ratio": round(statistics.median(s) / ours_s, 3),  # ours' throughput / this one's
        }
        for name, s in samples.items()
    }
    ratio = rows["scp, default cipher"]["ours_ratio"]
    return {"rounds": rounds, "methods": rows, "target_ratio": TARGET_RATIO, "meets_target": ratio >= TARGET_RATIO}


if __name__ == "__main__":
    main()
