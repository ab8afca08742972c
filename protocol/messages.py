"""Every message that crosses the daemon socket, as typed msgspec structs.

A connection starts with ``hello`` from the client and ``welcome`` from the
daemon. After that the client sends ``request`` frames and the daemon answers
each with ``response`` or ``error`` carrying the same id. The daemon may also
push ``event``, ``resync``, ``log-data`` and ``log-end`` frames at any time for
subscriptions the client opened.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

PROTOCOL_MAJOR: Final = 1
PROTOCOL_MINOR: Final = 1  # 1: executions.metadata pages; log-end says why a follow ended early

CAPABILITIES: Final = ("events", "log-follow", "snapshots", "hosts", "metadata-pages", "shell")


class ErrorCode:
    """Typed error codes; clients branch on these, never on message text."""

    BAD_FRAME: Final = "bad-frame"
    FRAME_TOO_LARGE: Final = "frame-too-large"
    PROTOCOL_VERSION: Final = "protocol-version"
    UNKNOWN_METHOD: Final = "unknown-method"
    INVALID_PARAMS: Final = "invalid-params"
    NOT_FOUND: Final = "not-found"
    INVALID_STATE: Final = "invalid-state"
    PERMISSION_DENIED: Final = "permission-denied"
    INTERNAL: Final = "internal"


class Hello(msgspec.Struct, tag="hello", tag_field="type"):
    client: str
    major: int
    minor: int


class Welcome(msgspec.Struct, tag="welcome", tag_field="type"):
    server: str
    major: int
    minor: int
    capabilities: list[str]
    daemon_id: str
    uid: int
    user: str


class Request(msgspec.Struct, tag="request", tag_field="type"):
    id: int
    method: str
    params: dict[str, Any] = {}


class Response(msgspec.Struct, tag="response", tag_field="type"):
    id: int
    result: Any = None


class Error(msgspec.Struct, tag="error", tag_field="type"):
    id: int | None
    code: str
    message: str


class Event(msgspec.Struct, tag="event", tag_field="type"):
    """A state change of one execution (or, with kind "host", of host ``host``); ``seq`` is monotonic."""

    seq: int
    execution_id: int
    kind: str
    status: str
    reason: str | None
    at: str
    host: str | None = None
    # kind "progress" (seq 0, never replayed): bytes of the inputs fetched so far, and in all
    done: int | None = None
    total: int | None = None
    # kind "task" (seq 0, never replayed; execution_id 0): task ``task`` is now ``status``
    task: int | None = None


class Resync(msgspec.Struct, tag="resync", tag_field="type"):
    """The asked-for sequence is older than what the daemon keeps: reload the list."""

    oldest: int
    latest: int


class LogData(msgspec.Struct, tag="log-data", tag_field="type"):
    """Whole log records in the on-disk format, from ``offset`` up to ``end``."""

    sub: int
    execution_id: int
    offset: int
    end: int
    data: str


class LogEnd(msgspec.Struct, tag="log-end", tag_field="type"):
    """The execution has ended and every record up to ``offset`` was sent; or, with ``error``,
    the follow ended early (the execution was deleted, the daemon failed) and that says why."""

    sub: int
    execution_id: int
    offset: int
    error: str | None = None
    code: str | None = None  # an ErrorCode, with error


class ShellData(msgspec.Struct, tag="shell-data", tag_field="type"):
    """Output of a shell opened with ``shell.open``: ``stream`` 1 is stdout (and a terminal), 2 stderr."""

    sub: int
    data: bytes
    stream: int = 1


class ShellExit(msgspec.Struct, tag="shell-exit", tag_field="type"):
    """The shell ended: with the command's exit code, or ``error`` saying why it could not go on."""

    sub: int
    code: int | None = None
    error: str | None = None


Message = Hello | Welcome | Request | Response | Error | Event | Resync | LogData | LogEnd | ShellData | ShellExit

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Message] = msgspec.json.Decoder(Message)


def encode_message(message: Message) -> bytes:
    return _encoder.encode(message)


def decode_message(payload: bytes) -> Message:
    """Decode one frame's payload; raises ``msgspec.DecodeError`` or ``ValidationError``."""
    return _decoder.decode(payload)
