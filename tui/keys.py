"""Which keys a screen offers, in the order they matter: for its footer (what fits) and its help (all).

Only runyard's own bindings (those with an id, which tui.toml can remap) are listed; Textual's
generic ones show only as extra keys of the same action (``↓`` beside ``j``), because a help full
of ``^pgup Page Left`` hides the keys that do something here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from rich.cells import cell_len
from rich.text import Text
from textual.app import App
from textual.binding import Binding
from textual.dom import DOMNode
from textual.screen import Screen
from textual.widget import Widget

# What the footer shows first when not everything fits; the rest follow in the order declared.
FOOTER_FIRST: Final = (
    "queue.open", "queue.filter", "hosts.drain", "hosts.enable", "detail.back", "logs.follow", "logs.search",
    "metadata.keys", "metadata.x_axis", "code.files", "queue.stop", "detail.stop", "hosts.scan",
    "queue.quit", "hosts.quit", "app.command",
)
HELP_ID: Final = "app.help"
# Between the queue and the hosts; only there, since on an execution 1 and 2 choose its tabs.
MODE_BINDINGS: Final = [
    Binding("1", "app.mode('queue')", "queue", id="app.queue"),
    Binding("2", "app.mode('hosts')", "hosts", id="app.hosts"),
]


@dataclass
class KeyRow:
    """One action: every key that does it, what it does, and who offers it."""

    keys: list[str]
    description: str
    binding_id: str
    owner: DOMNode
    show: bool


def key_rows(screen: Screen[object]) -> list[KeyRow]:
    """The runyard keys active on ``screen``: the focused widget's first, then the screen's, then the app's."""
    app = screen.app
    rows: dict[tuple[int, str], KeyRow] = {}
    extra: dict[tuple[int, str], list[str]] = {}
    for active in screen.active_bindings.values():
        binding, node = active.binding, active.node
        slot = (id(node), binding.action)
        shown = _display(app, binding)
        if binding.id and binding.description:
            row = rows.get(slot)
            if row is None:
                rows[slot] = KeyRow([shown], binding.description, binding.id, node, binding.show)
            elif shown not in row.keys:
                row.keys.append(shown)
        else:
            extra.setdefault(slot, []).append(shown)
    for slot, keys in extra.items():  # Textual's own key for the same action: ↓ beside j
        if slot in rows:
            rows[slot].keys += [k for k in keys if k not in rows[slot].keys]
    return sorted(rows.values(), key=lambda r: _depth(r.owner, screen))


def _depth(node: DOMNode, screen: Screen[object]) -> int:
    """Sections in order: a pane's own keys (logs, charts), the screen's, moving around, everywhere."""
    if isinstance(node, App):
        return 3
    if node is screen:
        return 1
    return 0 if getattr(node, "HELP_FIRST", False) else 2


def _display(app: App[object], binding: Binding) -> str:
    return app.get_key_display(binding)


def owner_title(node: DOMNode, screen: Screen[object]) -> str:
    if isinstance(node, App):
        return "everywhere"
    if node is screen:
        return screen.title or type(screen).__name__
    return str(getattr(node, "HELP_TITLE", "") or type(node).__name__)


def help_text(screen: Screen[object]) -> Text:
    """Every key of the screen in sections, for the help dialog."""
    rows = key_rows(screen)
    width = max((cell_len(" ".join(r.keys)) for r in rows), default=4)
    width = min(width, 16)
    out = Text()
    owner: DOMNode | None = None
    for row in rows:
        if row.owner is not owner:
            owner = row.owner
            if out:
                out.append("\n")
            out.append(owner_title(owner, screen), style="bold underline")
            out.append("\n")
        keys = " ".join(row.keys)
        out.append(f"{keys:>{width}}", style="bold")
        out.append(f"  {row.description}\n")
    out.rstrip()
    return out


def footer_items(screen: Screen[object], width: int) -> list[tuple[str, str]]:
    """(key, description) pairs that fit in ``width`` cells, the most useful first, ``?`` help always last."""
    rows = [r for r in key_rows(screen) if r.show]
    help_row = next((r for r in rows if r.binding_id == HELP_ID), None)
    rows = [r for r in rows if r is not help_row]
    rank = {binding_id: i for i, binding_id in enumerate(FOOTER_FIRST)}
    ordered = sorted(rows, key=lambda r: rank.get(r.binding_id, len(rank)))
    items = [(r.keys[0], r.description) for r in ordered]
    tail = [(help_row.keys[0], help_row.description)] if help_row else []
    budget = width - sum(_item_width(i) for i in tail)
    chosen: list[tuple[str, str]] = []
    for item in items:
        if _item_width(item) <= budget:
            chosen.append(item)
            budget -= _item_width(item)
    return chosen + tail


def _item_width(item: tuple[str, str]) -> int:
    key, description = item
    return cell_len(key) + 1 + cell_len(description) + 2


class KeyFooter(Widget):
    """The keys that matter most on this screen, as many as fit, and always ``?`` for the rest."""

    DEFAULT_CSS = """
    KeyFooter { dock: bottom; height: 1; background: $footer-background; color: $footer-foreground; }
    KeyFooter > .keyfooter--key { color: $footer-key-foreground; text-style: bold; }
    """
    COMPONENT_CLASSES = {"keyfooter--key"}

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, _screen: Screen[object]) -> None:
        self.refresh()

    def render(self) -> Text:
        key_style = self.get_component_rich_style("keyfooter--key")
        out = Text(no_wrap=True, overflow="crop")
        for key, description in footer_items(self.screen, self.size.width - 1):
            out.append(" ")
            out.append(key, style=key_style)
            out.append(f" {description} ")
        return out
