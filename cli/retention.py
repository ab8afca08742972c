"""`runyard retention`: what [retention] removes, or would (--dry-run); admins only."""

from __future__ import annotations

import argparse
import json

import msgspec

from runyard.protocol import Client
from runyard.protocol.retention import RetentionPlan
from runyard.protocol.units import human_size


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("retention", help="remove ended executions' logs, work and outputs by [retention] now "
                                         "(admins only); --dry-run lists what would go")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed and remove nothing")
    p.add_argument("--json", action="store_true", help="the plan as JSON")


async def cmd_retention(client: Client, args: argparse.Namespace) -> int:
    plan = msgspec.convert(await client.call("retention.run", {"dry_run": args.dry_run}), RetentionPlan)
    if args.json:
        print(json.dumps(msgspec.to_builtins(plan), indent=2))
        return 0
    limits = [f"older than {plan.days:g} days" if plan.days else "",
              f"over {human_size(plan.budget_bytes)}" if plan.budget_bytes else ""]
    policy = " or ".join(x for x in limits if x) or "nothing (no [retention] days or max_disk_gb set)"
    verb = "would remove" if plan.dry_run else "removed"
    print(f"policy: ended executions' files {policy}; pinned (kept by tag): {plan.kept_pinned}; "
          f"ended executions' files now: {human_size(plan.managed_bytes)}")
    for item in plan.executions:
        print(f"  {item.id:>8}  {item.owner:<12} ended {item.ended_at}  {human_size(item.bytes):>10}  ({item.why})")
    print(f"{verb} {len(plan.executions)} executions' files, {human_size(plan.bytes)}")
    return 0
