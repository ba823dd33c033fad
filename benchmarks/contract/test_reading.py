"""The read buffers the backends allocate: right shape and dtype, aligned, placed for a fast copy."""

import numpy as np
import pytest

from storage._reading import COPY_SKEW, PAGE, read_buffer


@pytest.mark.parametrize("dtype", ["u1", "<u2", "<f8", "<c16"])
@pytest.mark.parametrize("file_offset", [0, 16, 100, 4095, 123_456_789])
def test_read_buffer_placement(dtype, file_offset):
    buffer = read_buffer((3, 5, 7), np.dtype(dtype), file_offset)
    assert buffer.shape == (3, 5, 7)
    assert buffer.dtype == np.dtype(dtype)
    assert buffer.flags.c_contiguous
    assert buffer.flags.writeable
    assert buffer.ctypes.data % 16 == 0
    assert (buffer.ctypes.data - file_offset - COPY_SKEW) % PAGE < 16
