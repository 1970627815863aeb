"""Cross-process zero-copy: a worker process, SharedTensors, and a counted control channel."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from multiprocessing import shared_memory
from multiprocessing.connection import Client as raw_connect
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import nerve
from nerve import SharedTensor
from nerve.errors import SharedTensorBusyError, SharedTensorError, WorkerError
from nerve.runtime.worker import Client
from tests.unit.runtime.models import affine_relu

WAIT = 30.0
SRC = str(Path(nerve.__file__).resolve().parents[1])


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    paths = {
        "affine": affine_relu(8),
        "big": affine_relu(1 << 20),  # a 4 MiB input and output
        "batched": affine_relu(4, batch=4),
    }
    out = {}
    for name, model in paths.items():
        path = root / f"{name}.onnx"
        onnx.save(model, path)
        out[name] = str(path)
    return out


@pytest.fixture(scope="module")
def worker(models: dict[str, str]) -> Iterator[nerve.Worker]:
    with nerve.Worker(timeout=WAIT) as w:
        with w.connect() as client:
            client.load("affine", models["affine"])
            client.load("big", models["big"])
            client.load("batched", models["batched"], batch=True)
            client.load("slow", models["affine"], engine="null", delay_ms=1500)
        yield w
        assert w.is_alive(), "the worker died during the tests"


@pytest.fixture
def client(worker: nerve.Worker) -> Iterator[Client]:
    with worker.connect() as c:
        yield c


def reference(x: np.ndarray) -> np.ndarray:
    n = x.shape[-1]
    return np.maximum(x * np.linspace(-1, 1, n, dtype=np.float32)
                      + np.linspace(0.5, -0.5, n, dtype=np.float32), 0)


def test_run_in_the_worker_matches_in_process(client: Client) -> None:
    x = np.linspace(-3, 3, 8, dtype=np.float32)
    with SharedTensor.from_array(x) as xs:
        y = client.run("affine", {"x": xs}, timeout=WAIT)["y"]
        np.testing.assert_array_equal(y.array, reference(x))
        assert y.version >= 1
        assert client.worker_pid != os.getpid()
    # numpy inputs are staged into client-owned shared memory first
    y2 = client.run("affine", {"x": x}, timeout=WAIT)["y"]
    np.testing.assert_array_equal(y2.numpy(), reference(x))


def test_no_tensor_bytes_cross_the_control_channel(client: Client) -> None:
    runs = 5
    x = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)
    xs = SharedTensor.from_array(x)
    ys = SharedTensor.create((1 << 20,), np.float32)
    try:
        sent, received = client.bytes_sent, client.bytes_received
        for _ in range(runs):
            client.run("big", {"x": xs}, {"y": ys}, timeout=WAIT)
        sent, received = client.bytes_sent - sent, client.bytes_received - received
        np.testing.assert_array_equal(ys.array, reference(x))
        tensor_bytes = runs * 2 * x.nbytes  # what a copying protocol would have moved: 40 MiB
        assert sent < runs * 1024 and received < runs * 1024, (sent, received)
        assert sent + received < tensor_bytes / 10_000
        # The worker counted the same bytes arriving (the stats request included).
        session = client.stats()["session"]
        assert session["bytes_received"] == client.bytes_sent
    finally:
        xs.close()
        ys.close()


def test_held_outputs_are_not_overwritten(client: Client) -> None:
    first = client.run("affine", {"x": np.full(8, 1, np.float32)}, timeout=WAIT)["y"]
    snapshot = first.numpy()
    second = client.run("affine", {"x": np.full(8, -4, np.float32)}, timeout=WAIT)["y"]
    assert first.name != second.name
    np.testing.assert_array_equal(first.array, snapshot)


def test_batched_program_in_the_worker(client: Client) -> None:
    jobs = []
    rows = [1, 2, 1, 3]
    inputs = [np.full((r, 4), i - 1.5, np.float32) for i, r in enumerate(rows)]
    held = [SharedTensor.from_array(x) for x in inputs]
    try:
        jobs = [client.submit("batched", {"x": t}) for t in held]
        for x, job in zip(inputs, jobs):
            y = job.result(WAIT)["y"]
            assert y.shape == x.shape
            np.testing.assert_array_equal(y.array, reference(x))
    finally:
        for t in held:
            t.close()


def raw_run(client: Client, inputs: Any, outputs: Any, program: str = "affine") -> Any:
    return client.send_raw({"op": "run", "program": program, "inputs": inputs,
                            "outputs": outputs}, timeout=WAIT)


def test_bad_shared_memory_requests_are_rejected(client: Client) -> None:
    x = SharedTensor.from_array(np.ones(8, np.float32))
    y = SharedTensor.create((8,), np.float32)
    ints = SharedTensor.create((8,), np.int32)
    foreign = shared_memory.SharedMemory(create=True, size=4096)
    good_x, good_y = x.ref(), y.ref()
    end = x.data_offset + x.nbytes
    cases: list[tuple[Any, Any, type[Exception], str]] = [
        ({"x": {**good_x, "name": "../../etc/passwd"}}, {"y": good_y},
         SharedTensorError, "invalid shared-memory name"),
        ({"x": {**good_x, "name": "nerve_missing_0"}}, {"y": good_y},
         SharedTensorError, "no shared memory named"),
        ({"x": {"name": foreign.name, "offset": 128, "nbytes": 32}}, {"y": good_y},
         SharedTensorError, "not a nerve SharedTensor"),
        ({"x": {**good_x, "offset": 1 << 40}}, {"y": good_y}, SharedTensorError, "outside"),
        ({"x": {**good_x, "offset": 0}}, {"y": good_y}, SharedTensorError, "outside"),
        ({"x": {**good_x, "offset": end - 16}}, {"y": good_y}, SharedTensorError, "outside"),
        ({"x": {**good_x, "offset": -8}}, {"y": good_y}, SharedTensorError, "negative"),
        ({"x": {**good_x, "nbytes": 16}}, {"y": good_y}, SharedTensorError, "does not hold"),
        ({"x": {**good_x, "nbytes": 1 << 40}}, {"y": good_y}, SharedTensorError, "outside"),
        ({"x": {**good_x, "offset": x.data_offset + 2, "nbytes": 28}}, {"y": good_y},
         SharedTensorError, "aligned"),
        ({"x": {**good_x, "offset": "128"}}, {"y": good_y}, SharedTensorError, "integers"),
        ({"x": "not a reference"}, {"y": good_y}, SharedTensorError, "must be an object"),
        ({"x": ints.ref()}, {"y": good_y}, SharedTensorError, "holds int32"),
        ({"x": {**good_x, "token": "00" * 8}}, {"y": good_y}, SharedTensorError,
         "not the tensor"),
        ({"x": good_x, "z": good_x}, {"y": good_y}, SharedTensorError, "unknown inputs"),
        ({"x": good_x}, {}, SharedTensorError, "need shared tensors"),
        ({"x": good_x}, {"y": good_x}, SharedTensorError, "overlaps"),
    ]
    try:
        for inputs, outputs, error, message in cases:
            with pytest.raises(error, match=message):
                raw_run(client, inputs, outputs)
        with pytest.raises(WorkerError, match="no program named"):
            raw_run(client, {"x": good_x}, {"y": good_y}, program="nope")
        with pytest.raises(WorkerError, match="unknown op"):
            client.send_raw({"op": "format_disk"})
        # Nothing was written, and the worker still serves valid requests.
        assert y.version == 0 and not x.busy and not y.busy
        raw_run(client, {"x": good_x}, {"y": good_y})
        np.testing.assert_array_equal(y.array, reference(np.ones(8, np.float32)))
    finally:
        for t in (x, y, ints):
            t.close()
        foreign.close()
        foreign.unlink()


def test_malformed_and_oversized_messages_end_only_that_session(worker: nerve.Worker,
                                                                 client: Client) -> None:
    conn = raw_connect(worker.address, family="AF_UNIX", authkey=worker.authkey)
    try:
        conn.send_bytes(b"\xff not json")
        assert conn.poll(WAIT)
        reply = json.loads(conn.recv_bytes())
        assert reply["ok"] is False and "malformed" in reply["error"]["message"]
        with contextlib.suppress(OSError):  # the worker hangs up after reading the length
            conn.send_bytes(b"x" * (2 << 20))  # beyond the 1 MiB message limit
        assert conn.poll(WAIT)
        with pytest.raises((EOFError, OSError)):
            conn.recv_bytes()
    finally:
        conn.close()
    with pytest.raises(WorkerError, match=r"refused|cannot connect"):
        nerve.connect(worker.address, authkey=b"wrong key")
    assert client.run("affine", {"x": np.ones(8, np.float32)}, timeout=WAIT)["y"].shape == (8,)


def test_a_tensor_in_use_by_a_run_cannot_be_written(client: Client) -> None:
    x = SharedTensor.from_array(np.ones(8, np.float32))
    other_process_view = SharedTensor.attach(x.name)  # sees only the shared header
    try:
        job = client.submit("slow", {"x": x})
        with pytest.raises(SharedTensorBusyError):
            x.write(np.zeros(8, np.float32))
        wait_until(lambda: other_process_view.busy, "the worker to mark the input busy")
        with pytest.raises(SharedTensorBusyError):
            other_process_view.write(np.zeros(8, np.float32))
        job.result(WAIT)
        assert not x.busy and not other_process_view.busy
        x.write(np.zeros(8, np.float32))  # allowed again
    finally:
        other_process_view.close()
        x.close()


CHILD = """
import sys, time, numpy as np, nerve
client = nerve.connect(sys.argv[1], authkey=sys.argv[2])
x = nerve.SharedTensor.from_array(np.ones(8, np.float32))
job = client.submit("slow", {"x": x})
print("submitted", flush=True)
time.sleep(600)
"""


def test_a_client_killed_mid_run_does_not_hurt_the_worker(worker: nerve.Worker,
                                                          client: Client) -> None:
    # Start from a worker serving only this test's client (earlier sessions are released).
    wait_until(lambda: client.stats()["worker"]["sessions"] == 1, "earlier sessions to close")
    before = client.stats()["worker"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, worker.address,
                              worker.authkey.hex()], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"submitted"

        def running() -> bool:
            stats = client.stats()
            return stats["worker"]["inflight"] >= 1 and stats["worker"]["sessions"] == 2

        wait_until(running, "the child's run to reach the worker")
        assert client.stats()["worker"]["attachments"] > before["attachments"]
        child.send_signal(signal.SIGKILL)
        child.wait(WAIT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(WAIT)

    def released() -> bool:
        stats = client.stats()["worker"]
        return stats["sessions"] == 1 and stats["inflight"] == 0

    wait_until(released, "the worker to release the dead client's session")
    after = client.stats()["worker"]
    assert after["attachments"] == before["attachments"]  # the dead session's mappings closed
    assert worker.is_alive()
    y = client.run("affine", {"x": np.ones(8, np.float32)}, timeout=WAIT)["y"]
    np.testing.assert_array_equal(y.array, reference(np.ones(8, np.float32)))


def test_worker_starts_and_stops_cleanly(models: dict[str, str]) -> None:
    w = nerve.Worker(models={"affine": models["affine"]}, timeout=WAIT)
    try:
        with w.connect() as c:
            assert "affine" in c.programs()
        address = w.address
    finally:
        status = w.stop()
    assert status == 0
    assert not os.path.exists(address)
    with pytest.raises(WorkerError, match="cannot connect"):
        nerve.connect(address, w.authkey)


def test_a_recreated_tensor_name_is_never_served_from_a_stale_mapping(client: Client) -> None:
    name = f"nerve_test_{os.getpid()}_recreated"
    for value in (1.0, -3.0):
        with SharedTensor.from_array(np.full(8, value, np.float32), name=name) as x:
            y = client.run("affine", {"x": x}, timeout=WAIT)["y"]
            np.testing.assert_array_equal(y.array, reference(np.full(8, value, np.float32)))


def test_cli_worker_rejects_bad_model_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    from nerve.cli import main

    assert main(["worker", "--model", "no-equals-sign"]) == 2
    assert "--model expects NAME=PATH" in capsys.readouterr().err
