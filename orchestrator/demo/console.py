"""Reading what the demo's user types.

Lines are read from the file descriptor on the event loop itself (a pipe or a terminal is waited
for with ``anyio.wait_readable``), not by a blocking ``readline`` in a worker thread: a thread
blocked in ``read`` cannot be cancelled, so Ctrl-C waited for Enter and then printed a traceback.
Regular files and ``/dev/null`` cannot be polled and never block: they are read directly.
"""

from __future__ import annotations

import codecs
import os
import stat

import anyio


class LineReader:
    """Lines from a file descriptor, decoded as UTF-8 (bad bytes replaced)."""

    def __init__(self, fd: int) -> None:
        """Raises ``OSError`` when ``fd`` is not open."""
        mode = os.fstat(fd).st_mode
        self._fd = fd
        self.interactive = os.isatty(fd)
        self._pollable = self.interactive or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._eof = False

    async def readline(self) -> str | None:
        """The next line, without its line break; ``None`` at the end of the input (Ctrl-D)."""
        while "\n" not in self._buffer and not self._eof:
            if self._pollable:
                await anyio.wait_readable(self._fd)
            chunk = os.read(self._fd, 65536)  # readable: returns what is there without blocking
            self._eof = not chunk
            self._buffer += self._decoder.decode(chunk, final=self._eof)
        if not self._buffer:
            return None
        line, _, self._buffer = self._buffer.partition("\n")
        return line.removesuffix("\r")
