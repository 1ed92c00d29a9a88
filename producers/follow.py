"""``submit --follow FILE``: a growing file read as ``tail -F`` reads it.

The file's lines are read as they are written; a rotation (the path now names another
file) is followed once the old file is read to its end, and a truncation starts the
file again from its top (a truncation is seen, as ``tail`` sees it, when the file is
shorter than what was read, or no longer ends a line where the last line read ended). A
line is read only once it ends in a newline.

Where the follower is in the file is kept in a small state file beside it, written
(atomically) after each chunk is committed, together with the run and the line count: a
restarted follower goes on from there in the same run, and since documents are unique
per run by their id, a line the store already has is never stored twice.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

POLL_S = 0.1


@dataclass
class FollowState:
    """Where a follower is: its run, the file it reads (by inode), the byte offset after
    the last committed line, and the number of lines read before it."""

    run_id: int
    inode: int
    offset: int
    line_no: int

    @staticmethod
    def path_for(source: Path) -> Path:
        """The state file of ``source``: beside it, hidden."""
        return source.with_name(f".{source.name}.shiftdown-follow")

    @classmethod
    def load(cls, source: Path) -> FollowState | None:
        """The saved state of ``source``, if a follower ran on it before."""
        try:
            return cls(**json.loads(cls.path_for(source).read_text()))
        except FileNotFoundError:
            return None

    def save(self, source: Path) -> None:
        """Write the state beside ``source`` (a rename: never half written)."""
        target = self.path_for(source)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, target)


class Follower:
    """The lines of a growing file, forever (until ``stop``), as an iterable of bytes
    that the readers parse; ``committed(line_no)`` saves the position after that line."""

    def __init__(self, source: Path, state: FollowState) -> None:
        self.source = source
        self.state = state
        self._stop = threading.Event()
        # (line number, inode, offset after it) of the lines read and not yet committed.
        self._read: deque[tuple[int, int, int]] = deque()
        self._lock = threading.Lock()

    def stop(self) -> None:
        """End the iteration at the next poll (SIGINT, SIGTERM): what was read goes on to
        be committed."""
        self._stop.set()

    def committed(self, line_no: int) -> None:
        """Every line up to ``line_no`` is in the store: save the position after it."""
        with self._lock:
            last: tuple[int, int, int] | None = None
            while self._read and self._read[0][0] <= line_no:
                last = self._read.popleft()
        if last is not None:
            self.state.line_no, self.state.inode, self.state.offset = last
            self.state.save(self.source)

    def _open(self) -> tuple[BinaryIO, int] | None:
        try:
            f = self.source.open("rb")
        except FileNotFoundError:
            return None
        return f, os.fstat(f.fileno()).st_ino

    def __iter__(self) -> Iterator[bytes]:
        opened = self._open()
        while opened is None:
            if self._stop.wait(POLL_S):
                return
            opened = self._open()
        f, inode = opened
        if inode == self.state.inode and os.fstat(f.fileno()).st_size >= self.state.offset:
            f.seek(self.state.offset)
        line_no = self.state.line_no
        try:
            while not self._stop.is_set():
                line = f.readline()
                if line.endswith(b"\n"):
                    line_no += 1
                    with self._lock:
                        self._read.append((line_no, inode, f.tell()))
                    yield line
                    continue
                if line:  # still being written: read it again whole once it ends
                    f.seek(f.tell() - len(line))
                # At the end: rotated, truncated, or just not written yet.
                now = self._open()
                if now is not None and now[1] != inode:
                    f.close()
                    f, inode = now
                    continue
                if now is not None:
                    now[0].close()
                time.sleep(POLL_S)
                if _rewritten(f):
                    f.seek(0)
        finally:
            f.close()


def _rewritten(f: BinaryIO) -> bool:
    """Whether the file was truncated in place since it was read up to here: shorter
    than where we are, or (truncated and written again past it) no longer holding the
    newline that ended the last line read."""
    pos = f.tell()
    if os.fstat(f.fileno()).st_size < pos:
        return True
    return pos > 0 and os.pread(f.fileno(), 1, pos - 1) != b"\n"
