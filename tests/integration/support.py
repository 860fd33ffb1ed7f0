"""Pieces several integration tests share: a directory served on loopback (an archive of the
test's own), files put into a container as a tar, and a base image on the engine."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

from harness.core.model import Base
from harness.engine.bases import Bases, base_image_tag


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@contextlib.contextmanager
def served(directory: Path) -> Iterator[int]:
    """The directory over HTTP on 127.0.0.1 while the block runs; yields the port."""
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def tar_of(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A tar of path -> (content, mode), for a container's put_archive."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def base_on_engine(engine, name: str, base: Base, logs: Path) -> str:
    """The base image's tag, bootstrapped if this engine has none yet."""
    Bases(engine, {name: base}, logs).ensure(name)
    return base_image_tag(name)
