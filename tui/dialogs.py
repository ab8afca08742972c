"""Modal dialogs: a confirmation that names its targets, a one-line prompt, and key help."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Input, Label, Static

_MODAL_CSS = """
{name} {{
    align: center middle;
}}
{name} Toast {{
    display: none;  /* not over the question and its targets: toasts show again when it closes */
}}
{name} > Vertical {{
    width: 72;
    max-width: 95%;
    height: auto;
    max-height: 90%;
    border: thick $accent;
    background: $surface;
    padding: 0 1;
}}
{name} > Vertical > Label, {name} > Vertical > Static {{
    width: 100%;  /* as wide as the dialog, so a long question wraps instead of being cut */
}}
"""


def some_of(names: list[str], most: int = 12) -> str:
    """A list of names for a prompt's text: the first ``most``, then how many more there are."""
    shown = ", ".join(names[:most]) or "none yet"
    return shown + (f" … and {len(names) - most} more" if len(names) > most else "")


class ConfirmScreen(ModalScreen[bool]):
    """``y`` or Enter confirms; ``n``, ``q`` or Esc cancels. The question names what it touches."""

    DEFAULT_CSS = _MODAL_CSS.format(name="ConfirmScreen")
    BINDINGS = [
        Binding("y,enter", "answer(True)", "yes", id="confirm.yes"),
        Binding("n,q,escape", "answer(False)", "no", id="confirm.no"),
    ]

    def __init__(self, question: str, targets: list[str]) -> None:
        super().__init__()
        self.question = question
        self.targets = targets

    def compose(self) -> ComposeResult:
        shown = self.targets[:12]
        more = len(self.targets) - len(shown)
        lines = "\n".join(f"  • {t}" for t in shown) + (f"\n  … and {more} more" if more else "")
        with Vertical():
            # the question and targets name titles and hosts: shown as written, never as Rich markup
            yield Label(Text(self.question, style="bold"), id="question")
            yield Static(Text(lines), id="targets")
            yield Label("[b]y[/b] / Enter: yes    [b]n[/b] / q / Esc: no", id="keys")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class PromptScreen(ModalScreen[str | None]):
    """One line of input: Enter submits, Esc cancels (Ctrl+G too, since tmux delays Esc)."""

    DEFAULT_CSS = _MODAL_CSS.format(name="PromptScreen")
    BINDINGS = [Binding("escape,ctrl+g", "cancel", "cancel", id="prompt.cancel")]

    def __init__(self, label: str, value: str = "", placeholder: str = "", *, select: bool = True) -> None:
        super().__init__()
        self.select = select  # the old value selected, so that typing replaces it (a search)
        self.label = label
        self.value = value
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.label, markup=False)  # it may list metadata keys or quote a title
            yield Input(value=self.value, placeholder=self.placeholder, id="prompt-input",
                        select_on_focus=self.select)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """Every key of the screen it was opened from, that screen's own first; it scrolls when it does not fit."""

    DEFAULT_CSS = _MODAL_CSS.format(name="HelpScreen") + """
    HelpScreen #help-scroll { height: auto; }
    HelpScreen #help-scroll:focus { background: $surface; }
    """
    AUTO_FOCUS = "#help-scroll"
    BINDINGS = [
        Binding("q,escape,question_mark,enter", "close", "close", id="help.close"),
        Binding("j,down", "scroll('down')", "scroll down", show=False, id="help.down"),
        Binding("k,up", "scroll('up')", "scroll up", show=False, id="help.up"),
        Binding("pagedown,space", "scroll('page_down')", "page down", show=False, id="help.page_down"),
        Binding("pageup", "scroll('page_up')", "page up", show=False, id="help.page_up"),
        Binding("g,home", "scroll('home')", "top", show=False, id="help.top"),
        Binding("G,end", "scroll('end')", "end", show=False, id="help.end"),
    ]

    def __init__(self, origin: Screen[object]) -> None:
        super().__init__()
        self.origin = origin

    def compose(self) -> ComposeResult:
        from .keys import help_text

        with Vertical():
            yield Label(Text(f"Keys: {self.origin.title or type(self.origin).__name__}", style="bold"))
            with VerticalScroll(id="help-scroll"):
                yield Static(help_text(self.origin), id="keys-table")
            yield Label("[b]q[/b] Esc [b]?[/b] close · [b]j k[/b] PgUp PgDn scroll · "
                        "remap: runyard tui --keys", id="help-closing")

    def on_resize(self) -> None:
        self._fit()

    def on_mount(self) -> None:
        self._fit()

    def _fit(self) -> None:
        # The list scrolls inside the dialog: whatever the terminal's height, the title and the
        # closing line stay in view (border 2, title 1, closing line up to 2, margin 2).
        self.query_one("#help-scroll").styles.max_height = max(3, self.size.height - 7)

    def action_scroll(self, where: str) -> None:
        scroll = self.query_one("#help-scroll", VerticalScroll)
        {"down": scroll.scroll_down, "up": scroll.scroll_up, "home": scroll.scroll_home, "end": scroll.scroll_end,
         "page_down": scroll.scroll_page_down, "page_up": scroll.scroll_page_up}[where](animate=False)

    def action_close(self) -> None:
        self.dismiss(None)
