"""Secrets reach the command and nowhere else; containers run with less privilege than Docker's default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runyard.protocol import Client

from .conftest import Daemon, make_repo, run_cli, step_yaml, submit_repo, wait_for_status

pytestmark = pytest.mark.slow

SECRET = "s3cr3t-Value-9f1c"
OWN = "r00t-only-Value-42"  # the tests run as root: this execution's owner
OTHERS = "b0b-only-Value-77"

PRINTS_SECRET = """\
echo "token=$API_TOKEN length=${#API_TOKEN}"
echo "{\\"leak\\": \\"$API_TOKEN\\", \\"n\\": 1}"
echo "to stderr $API_TOKEN" >&2
echo "own=$OWN_TOKEN other=${OTHER_TOKEN:-unset}"
"""

SHOWS_PRIVILEGES = "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status\n"


@pytest.fixture
def daemon(daemon_factory: type[Daemon]) -> Daemon:
    d = daemon_factory(extra_config=f'[secrets]\nAPI_TOKEN = "{SECRET}"\n'
                                    f'[user_secrets.root]\nOWN_TOKEN = "{OWN}"\n'
                                    f'[user_secrets.rybob]\nOTHER_TOKEN = "{OTHERS}"\n')
    d.start()
    return d


async def test_a_secret_reaches_the_command_but_is_never_shown(daemon: Daemon, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("leak", "sh leak.sh"), "leak.sh": PRINTS_SECRET})
    seen_events = []
    async with await Client.connect(daemon.socket) as client:
        e = await submit_repo(client, repo, "leak", title="secret test")
        ended = await wait_for_status(client, e.id)
        assert ended.status == "complete"
        async for event in client.events(since=0):
            seen_events.append(event)
            if getattr(event, "seq", 0) >= 3:
                break
        metadata = await client.metadata(e.id)
    log = run_cli(daemon, "logs", str(e.id)).stdout
    assert f"token=*** length={len(SECRET)}" in log  # the command had the whole value
    assert "to stderr ***" in log
    assert "own=*** other=unset" in log  # the owner's secret, masked; another user's is not given
    assert metadata and metadata[0].values["leak"] == "***"
    shown = [
        log,
        run_cli(daemon, "info", str(e.id), "--json").stdout,
        run_cli(daemon, "list", "--json").stdout,
        run_cli(daemon, "metadata", str(e.id), "--json").stdout,
        json.dumps([repr(ev) for ev in seen_events]),
        daemon.log_text(),  # the daemon's own log, at debug level
    ]
    for text in shown:
        assert SECRET not in text and OWN not in text


async def test_containers_drop_capabilities_and_cannot_gain_privileges(daemon: Daemon, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("show", "sh show.sh"), "show.sh": SHOWS_PRIVILEGES})
    async with await Client.connect(daemon.socket) as client:
        e = await wait_for_status(client, (await submit_repo(client, repo, "show")).id)
    assert e.status == "complete"
    log = run_cli(daemon, "logs", str(e.id)).stdout
    fields = dict(line.split(":", 1) for line in log.splitlines() if line.startswith(("CapEff", "NoNewPrivs")))
    assert fields["NoNewPrivs"].strip() == "1"
    effective = int(fields["CapEff"].strip(), 16)
    net_raw, mknod, sys_chroot, setfcap = 1 << 13, 1 << 27, 1 << 18, 1 << 31
    assert effective & (net_raw | mknod | sys_chroot | setfcap) == 0
    chown, kill, setuid = 1 << 0, 1 << 5, 1 << 7
    assert effective & (chown | kill | setuid) == chown | kill | setuid  # what jobs need is kept
