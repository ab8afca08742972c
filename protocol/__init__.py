"""The wire contract between the runyard daemon and its clients, and the client library."""

from .client import Client, ConnectionLost, RemoteError, default_socket_path
from .messages import PROTOCOL_MAJOR, PROTOCOL_MINOR, ErrorCode

__all__ = [
    "PROTOCOL_MAJOR",
    "PROTOCOL_MINOR",
    "Client",
    "ConnectionLost",
    "ErrorCode",
    "RemoteError",
    "default_socket_path",
]
