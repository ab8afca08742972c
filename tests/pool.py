"""Real OpenSSH servers on loopback as pool hosts, each with its own port, host key and stand-in nvidia-smi.

Every host's sshd sits in front of the one local Docker engine; executions tell
their host by the runyard.host label. GPUs come from a stand-in `nvidia-smi`
on that sshd's PATH (sshd_config SetEnv) that prints the real CSV format, so
the daemon takes exactly the code path it takes on real hardware.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from runyard.protocol import Client

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def gpu_rows(model: str, count: int, memory_mb: int = 81920, *, na: bool = False, seed: str = "a") -> str:
    """CSV rows as `nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,utilization.gpu
    --format=csv,noheader,nounits` prints them; with ``na`` the last GPU reports [N/A] fields."""
    rows = []
    for i in range(count):
        uuid = f"GPU-{seed * 8}-{i:04d}-4e1f-9c2a-{i:012d}"
        used, util = ("[N/A]", "[N/A]") if na and i == count - 1 else (str(100 * i), str(10 * i))
        rows.append(f"{i}, {uuid}, {model}, {memory_mb}, {used}, {util}")
    return "\n".join(rows)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SshHost:
    """One pool host: a real sshd on 127.0.0.1:<port> with key-only auth."""

    name: str
    root: Path
    client_key: Path
    gpus_csv: str | None  # None: no nvidia-smi on the host at all
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def host_key(self) -> Path:
        return self.root / "host_key"

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True)
        bin_dir = self.root / "bin"
        bin_dir.mkdir(exist_ok=True)
        if self.gpus_csv is not None:
            smi = bin_dir / "nvidia-smi"
            smi.write_text("#!/bin/sh\n# stand-in for nvidia-smi: the real query's output format\n"
                           f"cat <<'EOF'\n{self.gpus_csv}\nEOF\n")
            smi.chmod(0o755)
        shutil.copy(f"{self.client_key}.pub", self.root / "authorized_keys")
        path = f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        (self.root / "sshd_config").write_text(textwrap.dedent(f"""\
            Port {self.port}
            ListenAddress 127.0.0.1
            HostKey {self.host_key}
            PidFile {self.root / 'sshd.pid'}
            AuthorizedKeysFile {self.root / 'authorized_keys'}
            PubkeyAuthentication yes
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PermitRootLogin prohibit-password
            StrictModes no
            UsePAM no
            AllowStreamLocalForwarding yes
            Subsystem sftp /usr/lib/openssh/sftp-server
            SetEnv PATH={path}
            LogLevel INFO
            """))

    def known_hosts_line(self) -> str:
        key = (self.root / "host_key.pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {key[0]} {key[1]}\n"

    def start(self) -> None:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                        stderr=subprocess.PIPE)
        assert self.process.stderr is not None
        seen = []
        for raw in self.process.stderr:  # wait for the line that says it listens: an event, not a sleep
            line = raw.decode(errors="replace")
            seen.append(line)
            if "Server listening" in line:
                break
        else:
            raise AssertionError(f"sshd for {self.name} did not start:\n{''.join(seen)}")
        stream = self.process.stderr
        log = (self.root / "sshd.log").open("ab")

        import threading

        def drain() -> None:
            for raw in stream:
                log.write(raw)
                log.flush()

        threading.Thread(target=drain, daemon=True).start()

    def kill(self) -> None:
        """The host drops off the network: sshd and every connection it serves die at once.

        Only sshd processes are killed: a command already running in a session ends on
        its own, as it would on a real machine whose network went away.
        """
        if self.process is None:
            return
        sshd = [pid for pid in _descendants(self.process.pid) if _comm(pid).startswith("sshd")]
        for pid in [*sshd, self.process.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=30)
        self.process = None

    def config(self, *, pool: str, extra: str = "", address: str | None = None) -> str:
        lines = ["[[hosts]]", f'name = "{self.name}"']
        if address is None:
            lines += ['address = "127.0.0.1"', f"port = {self.port}", 'user = "root"',
                      f'identity = "{self.client_key}"']
        else:
            lines.append(f'address = "{address}"')
        lines += [f'pool = "{pool}"', f'work_dir = "{self.root / "work"}"', 'pull = "never"']
        return "\n".join(lines) + "\n" + textwrap.dedent(extra) + "\n"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def make_client_key(root: Path) -> Path:
    key = root / "client_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def start_lone_host(root: Path, name: str = "gpu-01", gpus_csv: str | None = None) -> tuple[SshHost, Path, Path]:
    """One running sshd host with a fresh client key and a known_hosts file that trusts it."""
    key = make_client_key(root)
    host = SshHost(name, root / name, key, gpus_csv)
    host.prepare()
    host.start()
    known = root / "known_hosts"
    known.write_text(host.known_hosts_line())
    return host, key, known


async def wait_for_host(client: Client, name: str, states: set[str], timeout: float = 60) -> dict[str, object]:
    """Wait on the daemon's host events (not by polling) until host ``name`` is in one of ``states``."""

    async def current() -> dict[str, object] | None:
        for host in await client.hosts():
            if host.name == name and host.state in states:
                return {"state": host.state, "error": host.error}
        return None

    async def wait() -> dict[str, object]:
        # Replayed and live events alike only prompt a look at the current state.
        async for event in client.events(since=0):
            if getattr(event, "kind", "host") == "host":
                found = await current()
                if found is not None:
                    return found
        raise AssertionError("event stream ended")

    found = await current()
    if found is not None:
        return found
    return await asyncio.wait_for(wait(), timeout)


def start_hosts(root: Path, gpus: dict[str, str | None], *, ssh_extra: str = "") -> tuple[dict[str, SshHost], str]:
    """Running sshd hosts named by ``gpus`` (each with its stand-in nvidia-smi output, or none), and
    the [ssh] table that trusts them and reconnects fast."""
    key = make_client_key(root)
    hosts = {name: SshHost(name, root / name, key, csv) for name, csv in gpus.items()}
    for host in hosts.values():
        host.prepare()
        host.start()
    known = root / "known_hosts"
    known.write_text("".join(h.known_hosts_line() for h in hosts.values()))
    ssh = (f'[ssh]\nknown_hosts = "{known}"\nreconnect_min_seconds = 0.2\nreconnect_max_seconds = 1.0\n'
           + textwrap.dedent(ssh_extra))
    return hosts, ssh
