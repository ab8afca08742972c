"""Text a user or a run supplies is shown as written: ``[/]`` or ``[b]`` in it is not Rich markup.

Once, ``x[/]`` typed into the queue's filter, a command, a log search, or written into a title or a
metadata key crashed the TUI (Rich's MarkupError) wherever it reached a toast, dialog or table.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.text import Text
from textual.widgets import DataTable, Label, Static, Tree
from textual.widgets._toast import Toast

from runyard.protocol import Client
from runyard.tui.app import RunyardApp
from runyard.tui.detail import DetailScreen
from runyard.tui.dialogs import ConfirmScreen, PromptScreen
from runyard.tui.queue import QueueScreen
from runyard.tui.widgets import StatusBar

from .conftest import Daemon, make_repo, step_yaml, submit_repo, wait_for_status
from .test_tui import rows, until

pytestmark = pytest.mark.slow

ODD = "x[/] [b]y :smile:"
FILE = "x[b] [red]y :smile:.txt"  # a file name has no "/"; markup would take [b] and [red] away

MARKED_UP = f"""\
import json, time
print(json.dumps({{{ODD!r}: 1, "step": 1}}), flush=True)
print("a line with " + {ODD!r}, flush=True)
while True:
    time.sleep(0.05)
"""


def shown(widget: Static) -> str:
    rendered = widget.render()
    return rendered.plain if isinstance(rendered, Text) else str(rendered)


def toasts(app: RunyardApp) -> str:
    return "\n".join(shown(t) for t in app.screen.query(Toast))


async def test_markup_in_titles_keys_and_typed_text_is_shown_as_written(daemon: Daemon, tmp_path: Path) -> None:
    client = await Client.connect(daemon.socket, client_name="tests")
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("odd", "python3 odd.py"),
                                          "odd.py": MARKED_UP, f"{FILE}": "x"})
    held = await submit_repo(client, repo, "odd", title=ODD)
    await wait_for_status(client, held.id, {"started"})
    app = RunyardApp(daemon.socket, metadata_columns=[ODD])
    # toasts drawn (run_test leaves them out unless told): the crash was in drawing one
    async with app.run_test(size=(120, 36), notifications=True) as pilot:
        table = app.screen.query_one("#queue-table", DataTable)
        await until(pilot, lambda: held.id in rows(app) and str(table.get_row(str(held.id))[-1]) == "1",
                    "the execution and its metadata in the queue")
        assert str(table.get_row(str(held.id))[1]) == ODD
        assert [c.label.plain for c in table.ordered_columns][-1] == ODD
        bar = app.screen.query_one(StatusBar)

        # the filter, shown in the status bar as typed
        await pilot.press("slash", *ODD)
        await until(pilot, lambda: f"filter: {ODD}" in shown(bar), "the filter in the status bar")
        await pilot.press("ctrl+g")
        await until(pilot, lambda: held.id in rows(app), "the filter cleared")

        # the metadata column picker lists the key
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen), "the column picker")
        assert ODD in shown(app.screen.query_one(Label))
        await pilot.press("ctrl+g")

        # an unknown command is quoted in a toast
        await until(pilot, lambda: isinstance(app.screen, QueueScreen), "the queue")
        await pilot.press("colon")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen), "the command line")
        await pilot.press(*ODD)
        await pilot.press("enter")
        await until(pilot, lambda: "unknown command 'x[/]'" in toasts(app), "the unknown command's toast")

        # the stop confirmation names the title
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the stop confirmation")
        assert f"#{held.id} {ODD} (started)" in shown(app.screen.query_one("#targets", Static))
        await pilot.press("n")

        # renamed (to the same title): the toast quotes it
        await until(pilot, lambda: isinstance(app.screen, QueueScreen), "the queue")
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen), "the rename prompt")
        await pilot.press("enter")
        await until(pilot, lambda: f"to {ODD!r}" in toasts(app), "the rename's toast")

        # the log search, in the log's status line
        await until(pilot, lambda: isinstance(app.screen, QueueScreen), "the queue")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, DetailScreen), "the execution")
        await pilot.press("slash")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen), "the search prompt")
        await pilot.press(*ODD, "enter")
        await until(pilot, lambda: isinstance(app.screen, DetailScreen), "the execution again")
        status = app.screen.query_one("#log-status", Static)
        await until(pilot, lambda: f"search: {ODD!r}" in shown(status), "the search in the status line")

        # the metadata tab's table of latest values, and the snapshot's file names
        await pilot.press("2")
        latest = app.screen.query_one("#latest", DataTable)
        await until(pilot, lambda: ODD in latest.rows, "the key in the metadata table")
        assert str(latest.get_row(ODD)[0]) == ODD
        await pilot.press("4")
        tree = app.screen.query_one("#code-tree", Tree)
        await until(pilot, lambda: len(tree.root.children) >= 3, "the snapshot's files")
        assert any(n.label.plain.startswith(FILE) for n in tree.root.children)
        await pilot.pause()
        assert app.is_running
    # run_test re-raises what escaped a handler or a render: a MarkupError would end up here
    await client.stop([held.id])
    await client.close()
