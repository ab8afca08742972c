"""`runyard daemon --check-config` and `--install-systemd`: the daemon as an operator installs it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from runyard.daemon.config import Config

from . import render

EXIT_HOST_FAILED = 1
EXIT_USAGE = 2


def service_command(args: argparse.Namespace, config: Config) -> int:
    if args.install_systemd:
        return _install(args)
    return _check(args, config)


def _install(args: argparse.Namespace) -> int:
    from runyard.daemon.service import install_systemd

    if not args.config:
        print("runyard: --install-systemd needs --config: the unit runs the daemon with that file", file=sys.stderr)
        return EXIT_USAGE
    try:
        path, steps = install_systemd(args.config, Path(args.unit_dir))
    except OSError as exc:
        print(f"runyard: cannot write the unit into {args.unit_dir}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {path}")
    for step in steps:
        print(f"now run: {step}")
    return 0


def _check(args: argparse.Namespace, config: Config) -> int:
    from runyard.daemon.notify import NotifyError, read_secret
    from runyard.daemon.service import check_hosts

    for hook in config.notify:
        try:
            if hook.secret_file:
                read_secret(hook.secret_file)
        except NotifyError as exc:
            print(f"runyard: {exc}", file=sys.stderr)
            return EXIT_USAGE
    reports = asyncio.run(check_hosts(config))
    if args.json:
        print(json.dumps({"config": "valid", "ok": all(r.ok for r in reports), "hosts": [
            {"name": r.name, "pool": r.pool, "runtime": r.runtime, "ok": r.ok,
             "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in r.checks]}
            for r in reports]}, indent=2))
    else:
        colour = render.use_colour()
        print(f"config {args.config or '<defaults>'}: valid")
        if not reports:
            print("no hosts enabled: the daemon would run nothing")
        for report in reports:
            verdict = render.paint("ok", "32", colour) if report.ok else render.paint("FAILED", "31", colour)
            print(f"\nhost {report.name} (pool {report.pool}, {report.runtime}): {verdict}")
            for check in report.checks:
                mark = render.paint("ok", "32", colour) if check.ok else render.paint("FAIL", "31", colour)
                print(f"  {mark:<4}  {check.name + ':':<26}{check.detail}")
    return 0 if all(r.ok for r in reports) else EXIT_HOST_FAILED
