"""Lines as they arrive: a filter that answers each line without waiting for more.

``translate`` reads standard input as a co-process would feed it: one line written,
one translation back at once. It still batches for speed, by taking along every
line that has already arrived. So a file piped in is translated in full batches, a
line typed by another program is translated on its own, and nothing waits for a
batch to fill up.
"""

from __future__ import annotations

import os
import select
from collections.abc import Iterator

CHUNK_BYTES = 1 << 16


def line_groups(descriptor: int, most: int) -> Iterator[list[str]]:
    """Groups of at most ``most`` lines read from a file descriptor, without their
    line ends: each waits for one complete line and takes the lines already there.

    Lines end at ``\\n`` only (a lone ``\\r`` is kept, a ``\\r\\n`` loses its ``\\r``),
    so the line count is the input's; bytes that are not UTF-8 become U+FFFD. A last
    line without ``\\n`` counts too.

    >>> reading, writing = os.pipe()
    >>> _ = os.write(writing, "a\\nb\\r\\nc".encode()); os.close(writing)
    >>> list(line_groups(reading, most=2))
    [['a', 'b'], ['c']]
    """
    buffer, finished = b"", False
    while True:
        # Wait for data only while no complete line is here; then take what is ready.
        while not finished and (
            b"\n" not in buffer or select.select([descriptor], [], [], 0)[0]
        ):
            chunk = os.read(descriptor, CHUNK_BYTES)
            finished = not chunk
            buffer += chunk
            if buffer.count(b"\n") >= most:
                break
        *lines, buffer = buffer.split(b"\n")
        if finished and buffer:
            lines, buffer = [*lines, buffer], b""
        if not lines and finished:
            return
        for start in range(0, len(lines), most):
            yield [
                line.decode("utf-8", errors="replace").removesuffix("\r")
                for line in lines[start : start + most]
            ]
