"""The operations tables of the config: [metrics], [[notify]] and [retention].

Declared apart from config.py so the monitoring, webhook and housekeeping code can import them
without the rest; config.py holds them and calls check_ops.
"""

from __future__ import annotations

import ipaddress
from typing import Final, Literal

import msgspec

NotifyEvent = Literal["ended", "complete", "failed", "stopped",
                      "task-ended", "task-complete", "task-failed", "task-stopped"]
NOTIFY_EVENTS: Final = ("ended", "complete", "failed", "stopped",
                        "task-ended", "task-complete", "task-failed", "task-stopped")


class MetricsSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # "HOST:PORT" of a Prometheus text endpoint (GET /metrics); "" = off.
    listen: str = ""
    # The endpoint has no authentication and names users' executions and hosts: a listen
    # address other than loopback is refused unless this says the network is trusted.
    allow_remote: bool = False


class NotifySection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: str
    events: list[NotifyEvent] = msgspec.field(default_factory=lambda: ["ended"])
    users: list[str] = []  # only executions these users own; [] = everyone's
    # A file holding the HMAC-SHA256 key; the body's signature goes in X-Runyard-Signature.
    secret_file: str = ""
    timeout_seconds: float = 10.0
    retries: int = 5  # further attempts after a failed delivery, with doubling backoff
    backoff_seconds: float = 1.0
    queue_size: int = 1000  # deliveries waiting; past this the oldest are dropped (and logged)


class RetentionSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Ended executions' logs, local work directories and stored outputs go after this many days
    # since they ended; 0 = never by age.
    days: float = 0
    # ... or, oldest ended first, while logs, work and outputs together take more than this; 0 = no budget.
    max_disk_gb: float = 0
    # Pinned: executions carrying any of these tags are kept whatever their age or size; "*" (the
    # default) pins every tagged execution, as a tag is how a user marks a run worth keeping.
    keep_tags: list[str] = msgspec.field(default_factory=lambda: ["*"])
    # How often the daemon applies the policy; it also runs once at start.
    every_hours: float = 6.0


def listen_address(listen: str) -> tuple[str, int]:
    """("host", port) of a "HOST:PORT" or "[V6]:PORT" listen string; ValueError naming the problem."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'{listen!r} is not "HOST:PORT" (e.g. "127.0.0.1:9464")')
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name could resolve anywhere


def check_ops(metrics: MetricsSection, notify: list[NotifySection], retention: RetentionSection) -> None:
    """Raise ValueError naming the key that is wrong."""
    if metrics.listen:
        try:
            host, _ = listen_address(metrics.listen)
        except ValueError as exc:
            raise ValueError(f"metrics.listen: {exc}") from None
        if not is_loopback(host) and not metrics.allow_remote:
            raise ValueError(
                f"metrics.listen: {metrics.listen!r} is not a loopback address; the endpoint has no "
                "authentication and shows users' executions and hosts, so listen on 127.0.0.1 behind "
                "your scraper's proxy, or set metrics.allow_remote = true if this network is trusted")
    for i, hook in enumerate(notify):
        where = f"notify[{i}]"
        if not hook.url.startswith(("http://", "https://")):
            raise ValueError(f"{where}.url: {hook.url!r} must be an http:// or https:// URL")
        if not hook.events:
            raise ValueError(f"{where}.events: name at least one of {', '.join(NOTIFY_EVENTS)}")
        if hook.retries < 0 or hook.backoff_seconds < 0 or hook.timeout_seconds <= 0:
            raise ValueError(f"{where}: retries and backoff_seconds must not be negative, timeout_seconds > 0")
        if hook.queue_size < 1:
            raise ValueError(f"{where}.queue_size: must be at least 1")
    if retention.days < 0 or retention.max_disk_gb < 0:
        raise ValueError("retention.days and retention.max_disk_gb must not be negative (0 = off)")
    if retention.every_hours <= 0:
        raise ValueError("retention.every_hours: must be more than 0")
