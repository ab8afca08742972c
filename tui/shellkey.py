"""The TUI's shell key: the TUI steps aside and `runyard shell N` has the terminal until it exits.

The CLI does the work (daemon/shell.py decides who may and where it runs), so the TUI and the
command line open the same shell. The CLI's own complaints (refused, not running) go to a pipe and
come back as a toast, since the terminal they would be printed on is the TUI's again at once.
"""

from __future__ import annotations

import asyncio
import sys

from textual.app import App, SuspendNotSupported

from runyard.protocol.methods import ExecutionView


async def open_shell(app: App[None], socket_path: str, execution_id: int, view: ExecutionView | None) -> None:
    if view is not None and view.status != "started":
        app.notify(f"#{execution_id} is {view.status}: a shell needs a running execution", severity="error")
        return
    argv = [sys.executable, "-m", "runyard.cli", "--socket", socket_path, "shell", str(execution_id)]
    try:
        with app.suspend():
            # The child has this terminal (stdin, stdout) while the TUI's loop keeps its link alive.
            process = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE)
            _, err = await process.communicate()
    except SuspendNotSupported:
        app.notify("a shell needs the TUI in a real terminal", severity="error")
        return
    complaint = err.decode(errors="replace").strip()
    if complaint:
        app.notify(complaint.removeprefix("runyard: "), severity="error" if process.returncode == 2 else "warning")
