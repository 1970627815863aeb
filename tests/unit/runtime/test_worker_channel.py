"""The worker's control channel in process: framing, hand-formatted messages, prepared submits."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from nerve import SharedTensor
from nerve.runtime.program import null_program
from nerve.runtime.scheduler import Runtime
from nerve.runtime.worker import Client
from nerve.runtime.worker.protocol import MAX_MESSAGE, Channel, run_reply
from tests.unit.runtime.models import affine_program, affine_relu


@pytest.fixture
def pair() -> Iterator[tuple[Channel, socket.socket]]:
    from multiprocessing.connection import Connection

    ours, theirs = socket.socketpair()
    conn = Connection(ours.detach())
    try:
        yield Channel(conn), theirs
    finally:
        conn.close()
        theirs.close()


def frame(payload: bytes) -> bytes:
    return struct.pack("!i", len(payload)) + payload


def test_channel_speaks_multiprocessing_connection_framing() -> None:
    from multiprocessing.connection import Pipe

    a, b = Pipe()
    try:
        channel = Channel(a)
        b.send_bytes(b'{"op":"hello"}')
        assert channel.recv(MAX_MESSAGE) == b'{"op":"hello"}'
        assert channel.send(b"reply") == len(b"reply") + 4
        assert b.recv_bytes() == b"reply"
        big = b"x" * (900 << 10)  # more than the socket buffer: several writes and reads
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.append(b.recv_bytes()))
        reader.start()
        assert channel.send(big) == len(big) + 4
        reader.join(10)
        assert received == [big]
        sender = threading.Thread(target=b.send_bytes, args=(big,))  # arrives in pieces
        sender.start()
        assert channel.recv(MAX_MESSAGE) == big
        sender.join(10)
    finally:
        a.close()
        b.close()


def test_channel_splits_joined_messages_and_joins_split_ones(
    pair: tuple[Channel, socket.socket],
) -> None:
    channel, peer = pair
    peer.sendall(frame(b"one") + frame(b"") + frame(b"three"))
    assert channel.recv(MAX_MESSAGE) == b"one"
    assert channel.has_message()  # the rest came with the first read
    assert channel.recv(MAX_MESSAGE) == b""
    assert channel.recv(MAX_MESSAGE) == b"three"
    assert not channel.has_message()
    whole = frame(b"split across writes")
    peer.sendall(whole[:2])
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(channel.recv(MAX_MESSAGE)))
    reader.start()
    peer.sendall(whole[2:9])
    peer.sendall(whole[9:])
    reader.join(10)
    assert result == [b"split across writes"]


def test_channel_refuses_oversized_messages_and_reports_hangups(
    pair: tuple[Channel, socket.socket],
) -> None:
    channel, peer = pair
    peer.sendall(struct.pack("!i", 1025) + b"x" * 1025)
    with pytest.raises(OSError, match="bad message length"):
        channel.recv(1024)
    channel._buffer = b""  # what a session does after that error: hang up (here: start over)
    peer.sendall(struct.pack("!i", -1))  # the prefix of a > 2 GiB message
    with pytest.raises(OSError, match="bad message length"):
        channel.recv(MAX_MESSAGE)
    channel._buffer = b""
    peer.sendall(frame(b"complete") + frame(b"cut short")[:6])
    peer.shutdown(socket.SHUT_WR)
    assert channel.recv(MAX_MESSAGE) == b"complete"
    with pytest.raises(OSError, match="middle of a message"):
        channel.recv(MAX_MESSAGE)
    with pytest.raises(EOFError):
        channel.recv(MAX_MESSAGE)


def test_run_reply_is_the_json_of_the_reply() -> None:
    versions = {"nerve_1_ab12": 7, "x.y-z": 2}
    reply = json.loads(run_reply(41, versions, 0.0, 37.587, 5.9e-08, 75.4219))
    assert reply == {"id": 41, "ok": True, "status": "done", "versions": versions,
                     "queue_us": 0.0, "run_us": 37.59, "energy_j": 5.9e-08,
                     "worker_us": 75.42}
    # Ids that are not integers, and missing energy, still make valid JSON.
    other = json.loads(run_reply("abc", {}, 1.0, 2.0, None, 3.0))
    assert other["id"] == "abc" and other["energy_j"] is None and other["run_us"] == 2.0
    assert json.loads(run_reply(1, {}, 1.0, 2.0, None, 3.0))["energy_j"] is None


def test_run_requests_encode_the_tensors_they_name() -> None:
    client = Client.__new__(Client)  # only the request encoder is used: no connection
    client._run_json = {}
    x, y = SharedTensor.create((4,), np.float32), SharedTensor.create((4,), np.float32)
    try:
        for deadline, tag in ((None, None), (2.5, 'quote " and \\ slash')):
            data = client._run_request(7, "prog", 3, deadline, tag, {"x": x}, {"y": y})
            assert json.loads(data) == {
                "id": 7, "op": "run", "program": "prog", "priority": 3,
                "deadline_ms": deadline, "tag": tag,
                "inputs": {"x": x.ref()}, "outputs": {"y": y.ref()},
            }
        swapped = json.loads(client._run_request(8, "prog", 0, None, None, {"x": y}, {"y": x}))
        assert swapped["inputs"] == {"x": y.ref()} and swapped["outputs"] == {"y": x.ref()}
    finally:
        x.close()
        y.close()
    # A tensor made after the others were freed never gets their cached references.
    with SharedTensor.create((4,), np.float32) as z, SharedTensor.create((4,), np.float32) as w:
        request = json.loads(client._run_request(9, "prog", 0, None, None, {"x": z}, {"y": w}))
        assert request["inputs"] == {"x": z.ref()} and request["outputs"] == {"y": w.ref()}


def test_prepared_submit_runs_the_prepared_buffers() -> None:
    program = affine_program(4)
    x = np.linspace(-2, 2, 4, dtype=np.float32)
    out = np.zeros(4, np.float32)
    expected = program.run({"x": x})["y"]
    with Runtime() as rt:
        feeds, outs = program.prepare_feeds({"x": x}), program.prepare_out({"y": out})
        for inline in (True, False):
            out[...] = 0
            job = rt.submit(program, feeds, out=outs, inline=inline, prepared=True)
            assert job.result(10)["y"] is out
            np.testing.assert_array_equal(out, expected)


def test_a_waiter_is_woken_when_the_job_finishes() -> None:
    release = threading.Event()
    program = null_program(affine_relu(4), on_run=lambda env: release.wait(10))
    with Runtime() as rt:
        job = rt.submit(program, {"x": np.ones(4, np.float32)})
        woken: list[bool] = []
        waiter = threading.Thread(target=lambda: woken.append(job.wait(10)))
        waiter.start()
        assert not job.wait(0.05)  # still running: the waiter blocks
        release.set()
        waiter.join(10)
        assert woken == [True] and job.done() and job.wait(0)
