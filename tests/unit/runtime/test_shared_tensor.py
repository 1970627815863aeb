"""SharedTensor: header, validation of names/sizes/offsets, busy and version rules."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from multiprocessing import shared_memory

import numpy as np
import pytest

from nerve import SharedTensor
from nerve.errors import SharedTensorBusyError, SharedTensorError
from nerve.runtime.tensors import HEADER_SIZE


@pytest.fixture
def tensor() -> Iterator[SharedTensor]:
    t = SharedTensor.create((2, 3), np.float32)
    yield t
    t.close()


def test_round_trip_through_a_second_mapping(tensor: SharedTensor) -> None:
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor.write(data)
    other = SharedTensor.attach(tensor.name)
    try:
        assert (other.shape, other.dtype.value, other.version) == ((2, 3), "float32", 1)
        np.testing.assert_array_equal(other.array, data)
        with other.writable() as a:  # in place, seen by the first mapping
            a[0, 0] = 100
        assert tensor.array[0, 0] == 100 and tensor.version == 2
    finally:
        other.close()


def test_array_is_a_read_only_zero_copy_view(tensor: SharedTensor) -> None:
    view = tensor.array
    assert not view.flags.writeable
    with tensor.writable() as a:
        a[...] = 7
    assert np.all(view == 7)  # same memory


def test_bfloat16_and_integer_dtypes_keep_their_identity() -> None:
    from nerve.ir import DType

    with SharedTensor.create((4,), DType.BFLOAT16) as t:
        assert SharedTensor.attach(t.name).dtype is DType.BFLOAT16
    with SharedTensor.from_array(np.arange(3, dtype=np.int64)) as t:
        np.testing.assert_array_equal(t.numpy(), [0, 1, 2])


def test_write_checks_shape_and_dtype(tensor: SharedTensor) -> None:
    with pytest.raises(SharedTensorError, match=r"cannot write shape \(3, 2\)"):
        tensor.write(np.zeros((3, 2), np.float32))
    with pytest.raises(SharedTensorError, match="cannot write"):
        tensor.write(np.zeros((2, 3), np.complex64))


def test_busy_tensor_refuses_writes_until_the_run_completes(tensor: SharedTensor) -> None:
    worker_view = SharedTensor.attach(tensor.name)  # as a worker would map it
    try:
        worker_view.mark_busy(+1)
        assert tensor.busy
        with pytest.raises(SharedTensorBusyError, match="in use by a run"):
            tensor.write(np.zeros((2, 3), np.float32))
        with pytest.raises(SharedTensorBusyError), tensor.writable():
            pass
        worker_view.mark_busy(-1)
        tensor.write(np.ones((2, 3), np.float32))
    finally:
        worker_view.close()


@pytest.mark.parametrize(
    "name", ["../etc/passwd", "a/b", "", "-leading-dash", "x" * 300, "sp ace", "bad\x00"]
)
def test_bad_names_are_rejected(name: str) -> None:
    with pytest.raises(SharedTensorError, match="invalid shared-memory name"):
        SharedTensor.attach(name)


def test_missing_segment_is_rejected() -> None:
    with pytest.raises(SharedTensorError, match="no shared memory named"):
        SharedTensor.attach("nerve_test_does_not_exist_123")


def raw_segment(size: int) -> shared_memory.SharedMemory:
    return shared_memory.SharedMemory(create=True, size=size)


def test_foreign_segments_are_rejected() -> None:
    seg = raw_segment(256)
    try:
        with pytest.raises(SharedTensorError, match="not a nerve SharedTensor"):
            SharedTensor.attach(seg.name)
    finally:
        seg.close()
        seg.unlink()
    small = raw_segment(16)
    try:
        with pytest.raises(SharedTensorError, match="too small"):
            SharedTensor.attach(small.name)
    finally:
        small.close()
        small.unlink()


def corrupt(tensor: SharedTensor, fmt: str, offset: int, value: int) -> None:
    seg = shared_memory.SharedMemory(name=tensor.name)
    try:
        buf = seg.buf
        assert buf is not None
        struct.pack_into(fmt, buf, offset, value)
    finally:
        seg.close()


@pytest.mark.parametrize(
    ("fmt", "offset", "value", "message"),
    [
        ("<Q", 28, 10**9, "disagree"),  # data nbytes no longer matches the shape
        ("<Q", 36, 1 << 40, "outside"),  # data offset far beyond the segment
        ("<Q", 36, 8, "outside"),  # data offset inside the header
        ("<q", 52, -3, "disagree"),  # a negative dimension
        ("<H", 6, 9999, "dtype code"),
        ("<I", 8, 99, "bad header"),  # ndim beyond the maximum
    ],
)
def test_corrupt_headers_are_rejected(fmt: str, offset: int, value: int, message: str) -> None:
    t = SharedTensor.create((2, 3), np.float32)
    try:
        corrupt(t, fmt, offset, value)
        with pytest.raises(SharedTensorError, match=message):
            SharedTensor.attach(t.name)
    finally:
        t.close()


def test_data_windows_stay_inside_the_data(tensor: SharedTensor) -> None:
    f32 = np.dtype(np.float32)
    start = tensor.data_offset
    assert tensor.data_view(start, 24, f32, (2, 3)).shape == (2, 3)
    assert tensor.data_view(start + 12, 12, f32, (3,)).shape == (3,)  # the second row
    bad = [
        (0, 24, f32, (2, 3), "outside"),  # the header
        (start, 28, f32, (7,), "outside"),  # past the end of the data
        (start + 2, 4, f32, (1,), "aligned"),
        (start, 8, f32, (3,), "does not hold"),
        (start, 24, np.dtype(np.int32), (2, 3), "holds float32"),
        (start + 1 << 30, 4, f32, (1,), "outside"),
    ]
    for offset, nbytes, dtype, shape, message in bad:
        with pytest.raises(SharedTensorError, match=message):
            tensor.data_view(offset, nbytes, dtype, shape)


def test_close_unlinks_what_this_process_created() -> None:
    t = SharedTensor.create((1,), np.float32)
    name = t.name
    assert t.segment_size >= HEADER_SIZE + 4
    t.close()
    t.close()  # idempotent
    with pytest.raises(SharedTensorError, match="no shared memory named"):
        SharedTensor.attach(name)
    with pytest.raises(SharedTensorError, match="closed"):
        _ = t.array
