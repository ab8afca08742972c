"""runyard's terminal UI: a Textual dashboard that talks to the daemon only through runyard.protocol."""

from __future__ import annotations


def run_tui(socket_path: str | None, *, readonly: bool = False) -> int:
    """Open the TUI; returns the exit status for the command line."""
    import sys

    from .app import RunyardApp
    from .settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"runyard: {exc}", file=sys.stderr)
        return 2
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        # Without a terminal Textual has no keys to read and would spin waiting for them.
        which = "stdin" if not sys.stdin.isatty() else "stdout"
        print(f"runyard: the TUI needs a terminal, and {which} is not one (in a script use the CLI, "
              "e.g. `runyard list`; over ssh or su, ask for a terminal: `ssh -t`, `su -P` or `sudo -u`)",
              file=sys.stderr)
        return 2
    app = RunyardApp(socket_path, readonly=readonly, metadata_columns=settings.columns, keymap=settings.keys)
    app.run()
    # Textual shows an unhandled exception's traceback and sets 1; the command must not say it went well
    return app.return_code or 0


def binding_ids() -> list[tuple[str, str, str]]:
    """Every remappable binding: (id, default keys, what it does)."""
    from textual.binding import Binding

    from .app import RunyardApp
    from .chart import MetadataPane
    from .detail import DetailScreen
    from .dialogs import ConfirmScreen, HelpScreen, PromptScreen
    from .hosts import HostsScreen
    from .logview import LogView
    from .queue import QueueScreen
    from .widgets import VimTable

    found: list[tuple[str, str, str]] = []
    for owner in (RunyardApp, QueueScreen, HostsScreen, DetailScreen, LogView, MetadataPane, VimTable,
                  ConfirmScreen, PromptScreen, HelpScreen):
        for binding in owner.BINDINGS:
            if isinstance(binding, Binding) and binding.id and binding.id not in {f[0] for f in found}:
                found.append((binding.id, binding.key, binding.description))
    return found
