"""Garbage, oversized and out-of-order frames: an error reply, and the daemon serves on."""

from __future__ import annotations

import asyncio
import struct

import msgspec
import pytest

from runyard.protocol import Client, RemoteError
from runyard.protocol.framing import FrameDecoder, encode_frame
from runyard.protocol.messages import Error, Hello, Welcome, decode_message, encode_message

from .conftest import Daemon

pytestmark = pytest.mark.slow


async def _raw(daemon: Daemon) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(daemon.socket)


async def _read_message(reader: asyncio.StreamReader) -> object:
    decoder = FrameDecoder()
    while True:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        if not chunk:
            return None
        frames = decoder.feed(chunk)
        if frames:
            return decode_message(frames[0])


async def test_garbage_frame_gets_error_and_connection_goes_on(daemon: Daemon) -> None:
    reader, writer = await _raw(daemon)
    writer.write(encode_frame(b"\x00\xffnot json at all"))
    reply = await _read_message(reader)
    assert isinstance(reply, Error) and reply.code == "bad-frame"
    writer.write(encode_frame(b'{"type": "request", "id": "seven", "method": 3}'))
    reply = await _read_message(reader)
    assert isinstance(reply, Error) and reply.code == "bad-frame"
    writer.write(encode_frame(encode_message(Hello(client="raw", major=1, minor=0))))
    welcome = await _read_message(reader)
    assert isinstance(welcome, Welcome) and welcome.user == "root"
    writer.close()


async def test_oversized_frame_is_refused_and_others_keep_being_served(daemon: Daemon) -> None:
    async with await Client.connect(daemon.socket) as bystander:
        reader, writer = await _raw(daemon)
        writer.write(struct.pack(">I", 512 * 1024 * 1024) + b"{")
        reply = await _read_message(reader)
        assert isinstance(reply, Error) and reply.code == "frame-too-large"
        assert await _read_message(reader) is None  # the stream cannot be re-synchronised: closed
        assert await bystander.list_executions() == []


async def test_typed_errors_for_bad_requests(client: Client) -> None:
    with pytest.raises(RemoteError) as unknown:
        await client.call("executions.explode", {})
    assert unknown.value.code == "unknown-method"
    with pytest.raises(RemoteError) as wrong_type:
        await client.call("executions.get", {"id": "seven"})
    assert wrong_type.value.code == "invalid-params" and "params.id" in wrong_type.value.message
    with pytest.raises(RemoteError) as missing:
        await client.get(424242)
    assert missing.value.code == "not-found"
    with pytest.raises(RemoteError) as bad_status:
        await client.list_executions(status=["running"])
    assert bad_status.value.code == "invalid-params" and "'running'" in bad_status.value.message


async def test_wrong_protocol_major_is_refused(daemon: Daemon) -> None:
    reader, writer = await _raw(daemon)
    writer.write(encode_frame(encode_message(Hello(client="future", major=99, minor=0))))
    reply = await _read_message(reader)
    assert isinstance(reply, Error) and reply.code == "protocol-version"
    writer.close()


async def test_silent_client_does_not_block_others(daemon: Daemon) -> None:
    _reader, silent = await _raw(daemon)
    silent.write(b"\x00\x00")  # half a header, then nothing
    async with await Client.connect(daemon.socket) as other:
        assert await other.list_executions() == []
    silent.close()


def test_snapshot_upload_with_wrong_hash_is_refused(daemon: Daemon) -> None:
    async def go() -> None:
        async with await Client.connect(daemon.socket) as client:
            with pytest.raises(RemoteError) as bad:
                await client.snapshot_put("0" * 64, b"not what the id says")
            assert "does not match" in bad.value.message
            with pytest.raises(RemoteError) as escape:
                await client.snapshot_has("../../etc/passwd")
            assert escape.value.code == "invalid-params"

    asyncio.run(go())


def test_messages_round_trip() -> None:
    hello = Hello(client="x", major=1, minor=2)
    assert decode_message(encode_message(hello)) == hello
    with pytest.raises(msgspec.ValidationError):
        decode_message(b'{"type": "nonsense"}')
