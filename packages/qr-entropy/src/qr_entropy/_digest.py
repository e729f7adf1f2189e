"""Digests of "the bytes that chose a token": one BLAKE2b-128 hex digest per block row.

The bytes that chose a token are that token's row of the decode step's fetch: all
``n`` bytes of row ``i`` of the ``(rows, n)`` block (``data[i * n:(i + 1) * n]`` of
the fetch), whatever part of them the amplifier reads. The same function digests
them in the client (into `Provenance.row_digests` and the records) and in the
server (into its audit log), so a record and a log line name the same bytes with
the same string. See ARCHITECTURE.md, design note "Audit chain".
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["DIGEST_HEX_CHARS", "DIGEST_SIZE", "row_digest", "row_digests", "split_digests"]

#: Bytes of one digest: BLAKE2b with a 128-bit output.
DIGEST_SIZE = 16
#: Characters of one digest in lower-case hex.
DIGEST_HEX_CHARS = 2 * DIGEST_SIZE


def row_digest(data: Buffer) -> str:
    """BLAKE2b (``digest_size=16``, no key, no salt) of ``data``, as 32 lower-case hex chars.

    Args:
        data: The bytes of one row (bytes, or any C-contiguous buffer such as a uint8
            array row).
    """
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).hexdigest()


def row_digests(block: npt.NDArray[np.uint8]) -> tuple[str, ...]:
    """`row_digest` of every row of a ``(rows, n)`` uint8 block, in row order.

    hashlib releases the GIL while it hashes a buffer larger than 2 KiB, so a
    caller's fetch thread digests a decode step's block while other threads run.
    Measured on a 2-core VM: 64 × 20,480 bytes in about 1 ms (benchmarks/bench_entropy.py).

    Args:
        block: C-contiguous uint8 array of shape (rows, n).
    """
    if block.ndim != 2:
        raise ValueError(f"block must be 2-D (rows, n), got shape {block.shape}")
    blake2b = hashlib.blake2b
    return tuple(blake2b(row, digest_size=DIGEST_SIZE).hexdigest() for row in block)


def split_digests(data: bytes | bytearray | memoryview, rows: int) -> tuple[str, ...]:
    """Digests of ``data`` split into ``rows`` equal rows (what a server logs per request).

    Args:
        data: The bytes served for one request.
        rows: How many rows the client said the bytes split into (``>= 1``, dividing
            ``len(data)``).

    Raises:
        ValueError: ``rows`` is below 1 or does not divide ``len(data)``.
    """
    if rows < 1 or len(data) % rows:
        raise ValueError(f"rows={rows} must be >= 1 and divide the {len(data)} bytes served")
    view = memoryview(data)
    size = len(data) // rows
    blake2b = hashlib.blake2b
    return tuple(
        blake2b(view[i * size : (i + 1) * size], digest_size=DIGEST_SIZE).hexdigest()
        for i in range(rows)
    )
