"""Modal dialogs: a confirmation that names its targets, a one-line prompt, and key help."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Input, Label, Static

_MODAL_CSS = """
{name} {{
    align: center middle;
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
"""


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
            yield Label(f"[b]{self.question}[/b]", id="question")
            yield Static(lines, id="targets")
            yield Label("[b]y[/b] / Enter: yes    [b]n[/b] / q / Esc: no", id="keys")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class PromptScreen(ModalScreen[str | None]):
    """One line of input: Enter submits, Esc cancels (Ctrl+G too, since tmux delays Esc)."""

    DEFAULT_CSS = _MODAL_CSS.format(name="PromptScreen")
    BINDINGS = [Binding("escape,ctrl+g", "cancel", "cancel", id="prompt.cancel")]

    def __init__(self, label: str, value: str = "", placeholder: str = "") -> None:
        super().__init__()
        self.label = label
        self.value = value
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.label)
            yield Input(value=self.value, placeholder=self.placeholder, id="prompt-input")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """The keys of the screen it was opened from, with what each does."""

    DEFAULT_CSS = _MODAL_CSS.format(name="HelpScreen") + """
    HelpScreen #keys-table { height: auto; max-height: 30; overflow-y: auto; }
    """
    BINDINGS = [Binding("q,escape,question_mark,enter", "close", "close", id="help.close")]

    def __init__(self, origin: Screen[object]) -> None:
        super().__init__()
        self.origin = origin

    def compose(self) -> ComposeResult:
        rows: list[str] = []
        seen: set[str] = set()
        for _key, active in self.origin.active_bindings.items():
            binding = active.binding
            if not binding.description or binding.action in seen:
                continue
            seen.add(binding.action)
            keys = self.app.get_key_display(binding)
            for other in self.origin.active_bindings.values():
                if other.binding.action == binding.action and other.binding.key != binding.key:
                    keys += " " + self.app.get_key_display(other.binding)
            rows.append(f"[b]{keys:>14}[/b]  {binding.description}")
        with Vertical():
            yield Label(f"[b]Keys: {self.origin.title or type(self.origin).__name__}[/b]")
            yield Static("\n".join(rows), id="keys-table")
            yield Label("q / Esc / ? closes · keys can be remapped in ~/.config/runyard/tui.toml [keys]")

    def action_close(self) -> None:
        self.dismiss(None)
