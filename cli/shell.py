"""`runyard shell N [-- CMD ...]`: a shell, or one command, inside a running execution.

The daemon runs it on the execution's host (daemon/shell.py says where and as whom) and relays its
terminal over the socket. With a terminal on both ends the local one is put in raw mode, so keys
such as ^C and ^D reach the remote shell, and window size changes follow. Without one (a pipe, a
script), stdin is sent until it ends and stdout and stderr stay apart. The exit status is the
command's, as with ssh and docker exec.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
from typing import Any

from runyard.protocol import Client
from runyard.protocol.messages import ShellData

EXIT_LOST = 255  # as ssh: the shell's connection ended without an exit status


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "shell", help="a shell (or a command) inside a running execution; owner or admin",
        description="Open an interactive shell in a running execution's container (docker exec on its host, "
                    "over the daemon's SSH connection), or in its work directory for the process runtime. "
                    "With `-- CMD ARGS`, run that command instead. Exits with the command's status.")
    p.add_argument("id", help="a running execution's id, or latest (the newest)")
    p.add_argument("-T", "--no-tty", action="store_true",
                   help="no terminal, even when stdin is one (output keeps stdout and stderr apart)")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD",
                   help="the command and its arguments, after --")


async def cmd_shell(client: Client, args: argparse.Namespace) -> int:
    argv = list(args.argv)
    # Flags after the id are flags until `--` (`shell 18 -T`); argparse's REMAINDER would take
    # them as the command.
    while argv and argv[0] in ("-T", "--no-tty"):
        args.no_tty = True
        argv.pop(0)
    if argv and argv[0] == "--":
        argv = argv[1:]
    elif argv and argv[0].startswith("-"):
        from .main import CliError

        raise CliError(f"shell: unknown flag {argv[0]!r} (a command goes after --: runyard shell N -- CMD)")
    stdin, stdout = 0, sys.stdout.fileno()  # fd 0 itself: sys.stdin may be a stand-in without one
    use_tty = not args.no_tty and os.isatty(stdin) and os.isatty(stdout)
    rows, cols = 24, 80
    if use_tty:
        cols, rows = os.get_terminal_size(stdout)
    sub, frames = client.shell_channel()
    await client.call("shell.open", {"id": args.id, "sub": sub, "command": argv, "tty": use_tty,
                                     "rows": rows, "cols": cols, "term": os.environ.get("TERM", "xterm")})
    # Imported here: every other command of the CLI starts without them.
    import termios
    import tty

    loop = asyncio.get_running_loop()
    keys: asyncio.Queue[bytes] = asyncio.Queue()
    saved = termios.tcgetattr(stdin) if use_tty else None
    if use_tty:
        tty.setraw(stdin, termios.TCSANOW)  # not TCSAFLUSH: keys typed ahead are kept
        loop.add_signal_handler(signal.SIGWINCH, lambda: loop.create_task(_resize(client, sub, stdout)))
    # A thread, not the event loop, reads stdin: it may be a file (which epoll refuses), and a
    # blocked read must not keep the command from exiting (the thread is a daemon thread).
    threading.Thread(target=_read_stdin, args=(stdin, loop, keys), daemon=True).start()
    sender = asyncio.create_task(_send_input(client, sub, keys, use_tty))
    try:
        while True:
            frame = await frames.get()
            if frame is None:
                # As ssh when its connection drops: 255, whatever became of the command.
                print("runyard: the connection to the daemon was lost; the shell's status is unknown",
                      file=sys.stderr)
                return EXIT_LOST
            if isinstance(frame, ShellData):
                _write_all(stdout if frame.stream == 1 or use_tty else sys.stderr.fileno(), frame.data)
                continue
            if saved is not None:
                termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
                saved = None
            if frame.error:
                print(f"runyard: {frame.error}", file=sys.stderr)
            return frame.code if frame.code is not None else EXIT_LOST
    finally:
        sender.cancel()
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        if use_tty:
            loop.remove_signal_handler(signal.SIGWINCH)
        if not client.closed:
            with contextlib.suppress(Exception):
                await client.call("shell.close", {"sub": sub})


def _read_stdin(fd: int, loop: asyncio.AbstractEventLoop, keys: asyncio.Queue[bytes]) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        with contextlib.suppress(RuntimeError):  # the loop has closed: the command is over
            loop.call_soon_threadsafe(keys.put_nowait, data)
        if not data:
            return


async def _send_input(client: Client, sub: int, keys: asyncio.Queue[bytes], use_tty: bool) -> None:
    with contextlib.suppress(Exception):  # the connection went: the main loop says so
        while True:
            data = await keys.get()
            if not data:
                if not use_tty:  # with a terminal, ^D travels as a key like any other
                    await client.call("shell.input", {"sub": sub, "eof": True})
                return
            await client.call("shell.input", {"sub": sub, "data": data})


async def _resize(client: Client, sub: int, fd: int) -> None:
    cols, rows = os.get_terminal_size(fd)
    with contextlib.suppress(Exception):
        await client.call("shell.resize", {"sub": sub, "rows": rows, "cols": cols})


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
