"""Restart at scale (issue 17): `kill -9` of the daemon with 1,000 executions running on 20 hosts.

Twenty real sshd hosts on loopback (tests/pool.py's, with `MaxSessions` raised: a followed
plain-process execution holds three sessions of its host's connection), each `runtime =
"process"` with 50 slots. 1,000 executions submitted through the protocol: 950 `sleep 100000`
and, submitted last, 50 `sleep` that end while the daemon is down or reattaching. Once all have
started, the daemon is killed with SIGKILL and started again. Measured:

- socket: from the new process's start to the first answered request (`list`);
- reattached: from the same start until every running execution is followed again. Seen from
  the hosts, not from the daemon: a reattached execution has a `tail -F` on its stdout started
  after the restart (the runner's follow; read from /proc);
- nothing lost: every execution is then `started` (the long ones) or `complete` (the short
  ones, exit code 0), none errored.

Baseline in the same run: the same restart with 20 executions (one per host).

Targets: socket within 2 s, every execution reattached within 30 s, nothing lost.

The hosts' sshd sets SHLVL=1, so bash skips root's ~/.bashrc (here `pyenv init`) for their
commands; --bashrc keeps it.

Run: .venv/bin/python bench/bench_restart.py [--executions 1000 --hosts 20] [--bashrc]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_queue import QuietDaemon  # noqa: E402
from bench.common import save  # noqa: E402
from runyard.daemon.snapshots import snapshot_commit  # noqa: E402
from runyard.protocol import Client  # noqa: E402
from tests.conftest import make_repo, step_yaml  # noqa: E402
from tests.pool import SshHost, free_port, make_client_key  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
BOOT = time.time() - float(Path("/proc/uptime").read_text().split()[0])


class BusyHost(SshHost):
    lean_login = True

    def prepare(self) -> None:
        super().prepare()
        config = self.root / "sshd_config"
        text = config.read_text() + "MaxSessions 1000\n"
        if self.lean_login:
            # Each SSH command runs in the login user's shell, and Debian's bash reads ~/.bashrc for
            # it. This machine's root .bashrc runs `pyenv init`, whose background `pyenv rehash`
            # spins on a lock for up to a minute when hundreds of sessions start at once: that storm
            # (hundreds of bash processes, load 75-100) is this machine's, not a pool host's. With
            # SHLVL=1 set by sshd, bash counts itself a nested shell and skips ~/.bashrc, as a host
            # whose .bashrc returns early for non-interactive shells would.
            text = text.replace("SetEnv PATH=", "SetEnv SHLVL=1 PATH=")
        config.write_text(text)




def started_at(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return BOOT + int(fields[19]) / TICKS


def followers(work_roots: list[str], since: float, before: bool = False) -> set[str]:
    """Execution directories whose stdout a `tail -F` started after ``since`` follows (``before``: one
    started before it, the killed daemon's, still running)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if not argv or not argv[0].endswith(b"tail") or b"-F" not in argv:
                continue
            path = argv[-2].decode() if argv[-1] == b"" else argv[-1].decode()
            if not path.endswith("/.runyard/stdout") or (started_at(int(entry)) < since) != before:
                continue
        except (OSError, IndexError, ValueError):
            continue
        if any(path.startswith(r) for r in work_roots):
            found.add(path.rsplit("/.runyard/", 1)[0])
    return found


def host_cpu(root: Path) -> float:
    """CPU seconds of the processes running for this run's executions on its hosts, reaped children included."""
    mine, total = str(root).encode(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if mine in Path(f"/proc/{entry}/cmdline").read_bytes():
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                    total += sum(int(f) for f in fields[11:15])
            except (OSError, ValueError):
                continue
    return total / TICKS


def proc_cpu(pid: int, children: bool = True) -> float:
    """CPU seconds of one process (and of its children it has reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15 if children else 13]) / TICKS


def tree_cpu(roots: list[int], since: float) -> float:
    """CPU seconds of the live processes under ``roots`` (the hosts' sshd: their sessions' login shells,
    tails and watchers) started after ``since``, with what each has reaped."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    under = set(roots)
    changed = True
    while changed:
        changed = False
        for pid, ppid in parent.items():
            if ppid in under and pid not in under:
                under.add(pid)
                changed = True
    total = 0.0
    for pid in under - set(roots):
        try:
            if started_at(pid) >= since:
                total += proc_cpu(pid)
        except (OSError, ValueError, IndexError):
            continue
    return total


def load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def kill_leftovers(root: Path) -> None:
    """What this run started on its hosts and may have left (each by its pid): wrappers, commands, tails."""
    for pid_file in root.glob("h*/work/*/*/.runyard/child.pid"):
        try:
            os.killpg(int(pid_file.read_text().strip()), 9)  # the command's own process group
        except (OSError, ValueError):
            pass
    mine = str(root).encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if mine in Path(f"/proc/{entry}/cmdline").read_bytes():
                    os.kill(int(entry), 9)
            except OSError:
                continue


async def until_all_started(client: Client, ids: set[int]) -> None:
    started: set[int] = set()
    async for event in client.events(since=0):
        if getattr(event, "execution_id", 0) in ids and getattr(event, "status", "") == "started":
            started.add(event.execution_id)  # type: ignore[union-attr]
            if len(started) == len(ids):
                return


async def one(root: Path, executions: int, host_count: int) -> dict[str, Any]:
    key = make_client_key(root)
    hosts = [BusyHost(f"h{i:02d}", root / f"h{i:02d}", key, None) for i in range(host_count)]
    try:
        for h in hosts:
            for attempt in range(3):
                h.prepare()
                try:
                    h.start()
                    break
                except AssertionError:  # its port was taken meanwhile (free_port's race): another one
                    if attempt == 2:
                        raise
                    h.port = free_port()
    except BaseException:
        for h in hosts:
            h.kill()  # those started: an sshd left running would outlive the run
        raise
    known = root / "known_hosts"
    known.write_text("".join(h.known_hosts_line() for h in hosts))
    per_host = -(-executions // host_count)
    config = (f'[ssh]\nknown_hosts = "{known}"\nreconnect_min_seconds = 0.2\nreconnect_max_seconds = 1.0\n'
              + "".join(h.config(pool="p", extra=f'runtime = "process"\nmax_concurrent = {per_host}\n')
                        for h in hosts))
    daemon = QuietDaemon(root=root / "d", local_extra="enabled = false\n", extra_config=config)
    daemon.root.mkdir()
    short = executions // 20
    repo = make_repo(root / "repo", {"valohai.yaml": step_yaml("long", "sleep 100000")
                                     + step_yaml("short", "sleep 10")})
    try:
        daemon.start()
        async with await Client.connect(daemon.socket, client_name="bench") as client:
            snap = snapshot_commit(repo, "HEAD")
            await client.snapshot_put(snap.id, snap.data)
            t0 = time.perf_counter()
            ids = [(await client.submit(step="long", snapshot=snap.id)).id for _ in range(executions - short)]
            short_ids = [(await client.submit(step="short", snapshot=snap.id)).id for _ in range(short)]
            await until_all_started(client, set(ids + short_ids))
            all_started_s = time.perf_counter() - t0
        # What following them costs the hosts while nothing happens: the wrappers', watchers' and
        # tails' CPU (with their reaped children: the watchers' `sleep`), per second.
        cpu0, at0 = host_cpu(root), time.perf_counter()
        await asyncio.sleep(10)
        host_cpu_per_s = (host_cpu(root) - cpu0) / (time.perf_counter() - at0)
        work_roots = [str(h.root / "work") for h in hosts]
        sshd = [h.process.pid for h in hosts if h.process is not None]
        load_before = load()
        daemon.kill9()
        killed = time.time()
        config_path = daemon.root / "config.toml"
        restarted = time.time()
        log = (daemon.root / "daemon.log").open("ab")
        daemon.process = subprocess.Popen([sys.executable, "-m", "runyard.cli", "daemon", "--config", str(config_path)],
                                          stdout=log, stderr=log)
        answered = None
        while answered is None:
            try:
                async with await Client.connect(daemon.socket, client_name="bench") as client:
                    await client.list_executions(limit=1)
                    answered = time.time() - restarted
            except (OSError, ConnectionError):
                await asyncio.sleep(0.02)
            except Exception as exc:  # the old socket file answers nothing: retried until the new one serves
                if "refused" not in str(exc).lower() and "no such file" not in str(exc).lower():
                    raise
                await asyncio.sleep(0.02)
        wanted = set(ids + short_ids)
        reattached = None
        seen: list[tuple[float, int]] = []
        while True:
            found = followers(work_roots, restarted)
            seen.append((round(time.time() - restarted, 2), len(found)))
            async with await Client.connect(daemon.socket, client_name="bench") as client:
                views = [v for v in await client.list_executions(limit=executions + 10) if v.id in wanted]
            running = {v.id for v in views if v.status == "started"}
            # attempt directories are named <id> or <id>-<attempt>
            followed = {int(d.rsplit("/", 1)[-1].split("-")[0]) for d in found}
            if running <= followed:
                reattached = time.time() - restarted
                break
            if time.time() - restarted > 300:
                break
            await asyncio.sleep(0.5)
        # Where the reattach's CPU went: the new daemon's own, and the hosts' (their SSH sessions' login
        # shells and commands), from the kill until all were followed again.
        daemon_cpu = proc_cpu(daemon.process.pid)
        hosts_cpu = tree_cpu(sshd, restarted)
        load_after = load()
        statuses: dict[str, int] = {}
        for v in views:
            key_ = f"{v.status} {v.reason or ''}".strip()
            statuses[key_] = statuses.get(key_, 0) + 1
        stale = len(followers(work_roots, restarted, before=True))
        lost = [v.id for v in views if v.status not in ("started", "complete")
                or (v.status == "complete" and v.id not in short_ids)]
        async with await Client.connect(daemon.socket, client_name="bench") as client:
            await client.stop(all=True)
        return {"executions": executions, "hosts": host_count, "all_started_after_submit_s": round(all_started_s, 1),
                "down_s": round(restarted - killed, 2),
                "host_cpu_while_followed_per_s": round(host_cpu_per_s, 2), "socket_answers_s": round(answered, 2),
                "all_reattached_s": round(reattached, 2) if reattached is not None else None,
                "daemon_cpu_s_until_reattached": round(daemon_cpu, 1),
                "hosts_cpu_s_until_reattached": round(hosts_cpu, 1),
                "load_before_kill": load_before, "load_when_reattached": load_after,
                "statuses": statuses, "lost": lost, "killed_daemons_tails_still_running": stale,
                "followed_over_time": seen[:: max(1, len(seen) // 20)]}
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
        for h in hosts:
            h.kill()
        kill_leftovers(root)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the hosts' and the daemon's files (and logs)")
    parser.add_argument("--bashrc", action="store_true",
                        help="let the hosts' login shell read root's ~/.bashrc (here: pyenv init) for every command")
    args = parser.parse_args()
    BusyHost.lean_login = not args.bashrc
    results: dict[str, Any] = {}
    for name, count in (("baseline", args.hosts), ("at_scale", args.executions)):
        root = Path(tempfile.mkdtemp(prefix="ryr-", dir="/tmp"))
        try:
            results[name] = await one(root, count, args.hosts)
            print(name, results[name], flush=True)
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    save("restart", results)


if __name__ == "__main__":
    asyncio.run(main())
