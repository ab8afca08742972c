"""`retention.run`: what housekeeping removes (or would, with dry_run), admins only."""

from __future__ import annotations

import msgspec


class RetentionParams(msgspec.Struct, forbid_unknown_fields=True):
    dry_run: bool = True


class RetentionItem(msgspec.Struct):
    id: int
    owner: str
    ended_at: str
    bytes: int  # its log, work directories and local outputs (S3 outputs are not counted)
    why: str  # "age" or "budget"


class RetentionPlan(msgspec.Struct):
    dry_run: bool
    executions: list[RetentionItem]
    bytes: int  # all that the executions listed free
    kept_pinned: int  # ended executions kept for their tags
    managed_bytes: int  # what ended, not yet removed executions take now, pinned ones included
    budget_bytes: int  # 0: no budget
    days: float  # 0: no age limit
