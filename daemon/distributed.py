"""Distributed tasks (Valohai's ``type: distributed``): N identical members that know each other.

A distributed task's children are a *group*: the scheduler places them all in one pass or none
(scheduler.py, rule 4), and the placement is one transaction, so after a crash the group is
either wholly placed (each runner finds or creates its member's container) or wholly queued:
there is never a second group, nor half of one holding GPUs.

Each member's container then gets what Valohai gives it: ``/valohai/config/distributed.json``
(and ``.yaml``) with every member, and ``VH_DIST_MEMBER_ID``, ``VH_DIST_MEMBER_INDEX`` and
``VH_DIST_MEMBER_COUNT``, so valohai-utils' ``valohai.distributed`` works unchanged. Members run
with the host's network (Docker ``--network host``; a plain process has it anyway): a member
listens on its host's address, and that address is its ``local_ips``: 127.0.0.1 when the whole
group is on one host, else its host's configured address (``address`` of its [[hosts]] entry, or
its name; this machine's host name for [local]).

The member list is built from the stored rows (the task's children in id order, their hosts), so
every member, and a member whose container is made again after a restart, sees the same list.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .record import ExecutionRow
from .scheduler import Capacity, Demand, place_group

if TYPE_CHECKING:
    from .hosts import Host
    from .store import Store

GROUP_KEY: Final = "distributed"  # in an execution's resources: the size of its group
GROUP_INCOMPLETE: Final = "group-incomplete"  # a task's reason: a member ended or left before the group was placed
LOOPBACK: Final = "127.0.0.1"


def group_size(row: ExecutionRow) -> int:
    """How many members ``row``'s group has; 0 when it is not a distributed task's member."""
    if row.task_id is None:
        return 0
    size = row.resources.get(GROUP_KEY)
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 0


class Groups:
    """The unplaced queue's members of distributed tasks, per group, for the scheduler's rule 4.
    Follows Core's queue (Core.track): a demand enters and leaves it with the queue."""

    def __init__(self) -> None:
        self._members: dict[int, dict[int, Demand]] = {}

    def add(self, d: Demand) -> None:
        if d.group is not None:
            self._members.setdefault(d.group, {})[d.execution_id] = d

    def remove(self, d: Demand) -> None:
        if d.group is None:
            return
        members = self._members.get(d.group)
        if members is not None:
            members.pop(d.execution_id, None)
            if not members:
                del self._members[d.group]

    def members(self, group: int, busy: Callable[[int], bool]) -> list[Demand]:
        """The group's queued members in id order, less those whose last runner has not finished."""
        members = self._members.get(group, {})
        return [members[i] for i in sorted(members) if not busy(i)]


@dataclass(frozen=True, slots=True)
class Member:
    execution_id: int
    host: str | None
    created_at: str


def address(hosts: Sequence[str | None], host: str | None, host_of: Callable[[str], Host | None]) -> list[str]:
    """The addresses at which the others reach a member placed on ``host`` (see the module's doc)."""
    if host is None:
        return []
    if len(set(hosts)) == 1:
        return [LOOPBACK]
    found = host_of(host)
    if found is None:
        return []
    ssh = found.settings.ssh
    if ssh is None:
        return [socket.gethostname()]
    return [ssh.address or ssh.name]


def config(task_id: int, members: Sequence[Member], me: int,
           host_of: Callable[[str], Host | None]) -> dict[str, Any]:
    """distributed.json for member ``me`` (an execution id) of the task's ``members`` (in id order).

    Member ids are the members' indexes ("0", "1", ...): valohai-utils ranks by them, so member 0
    is the master in every member's view."""
    hosts = [m.host for m in members]
    described = [{
        "announce_time": m.created_at,
        "identity": m.host or "",
        "job_id": f"runyard-{m.execution_id}",
        "member_id": str(i),
        # Host networking: every port is the host's, so none is mapped (as Valohai writes it then).
        "network": {"exposed_ports": {}, "local_ips": (ips := address(hosts, m.host, host_of)),
                    "public_ips": list(ips)},
    } for i, m in enumerate(members)]
    index = [m.execution_id for m in members].index(me)
    return {
        "config": {"group_name": f"task-{task_id}", "member_id": str(index), "required_count": len(members)},
        "members": described,
        "self": described[index],
    }


def environment(data: dict[str, Any]) -> dict[str, str]:
    """The VH_DIST_* variables Valohai sets for a member, from its distributed.json."""
    return {
        "VH_DIST_MEMBER_ID": str(data["config"]["member_id"]),
        "VH_DIST_MEMBER_INDEX": str(data["config"]["member_id"]),
        "VH_DIST_MEMBER_COUNT": str(data["config"]["required_count"]),
    }


async def member_config(store: Store, row: ExecutionRow,
                        host_of: Callable[[str], Host | None]) -> dict[str, Any] | None:
    """distributed.json for ``row``, or None when it is not a distributed task's member."""
    if not group_size(row) or row.task_id is None:
        return None
    rows = await store.db.execute_fetchall(
        "SELECT id, host, created_at FROM executions WHERE task_id = ? ORDER BY id", (row.task_id,))
    members = [Member(int(r[0]), r[1], r[2]) for r in rows]
    if row.id not in {m.execution_id for m in members}:
        return None
    return config(row.task_id, members, row.id, host_of)


async def unplaced(store: Store, task_id: int) -> int:
    """How many of the task's children wait unplaced (created, or queued without a host)."""
    rows = list(await store.db.execute_fetchall(
        "SELECT COUNT(*) FROM executions WHERE task_id = ? AND status IN ('created', 'queued') AND host IS NULL",
        (task_id,)))
    return int(rows[0][0]) if rows else 0


def refusal(count: int, *, limit: int | None, retries: int, resources: dict[str, Any],
            cluster_pools: set[str], capacities: Sequence[Capacity] | None) -> str | None:
    """Why a distributed task of ``count`` members, each asking ``resources``, could never run as
    one group, or None. ``capacities``: every host of the pool, empty (None: some host's inventory
    is not known yet, so whether the group fits is not judged)."""
    pool = resources.get("pool")
    if limit is not None and limit < count:
        return (f"maximum-queued-executions ({limit}) is below the distributed task's execution-count ({count}): "
                "its members run all at once")
    if retries:
        return ("a distributed task's members are not retried (--retry): a member whose host is lost ends, "
                "and the task follows its on-child-error")
    if pool in cluster_pools:
        return f"pool {pool!r} is a Slurm cluster: distributed tasks run on runyard's own hosts only"
    if capacities is not None:
        members = [Demand(execution_id=i, priority=0, submitted=0.0, pool=pool, gpus=int(resources.get("gpus", 0)),
                          cpus=float(resources.get("cpus", 0)), memory_mb=int(resources.get("memory_mb", 0)))
                   for i in range(count)]
        hosts = [c for c in capacities if pool is None or c.pool == pool]
        if hosts and place_group(members, hosts) is None:
            where = f"pool {pool!r}" if pool else "the pool"
            return (f"the hosts of {where} could never hold all {count} members at once (each asks for "
                    f"{members[0].gpus} GPUs, {members[0].cpus:g} CPUs and {members[0].memory_mb} MB)")
    return None
