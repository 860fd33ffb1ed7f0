"""A classic Docker build, streamed into its log with each step shown, bounded in time; and
the content hash that names what it builds."""

from __future__ import annotations

import hashlib
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import requests
import urllib3

from ..core.progress import say
from ..core.text import one_line

STEP_LINE = re.compile(r"^Step (\d+)/(\d+) : (.*)")


def content_hash(context: bytes, base_id: str) -> str:
    return hashlib.sha256(base_id.encode() + b"\0" + context).hexdigest()[:16]


def docker_build(
    engine: docker.DockerClient,
    context: bytes,
    tag: str,
    log_path: Path,
    subject: str,
    timeout: float,
    buildargs: dict[str, str] | None = None,
    network_mode: str | None = None,
) -> tuple[bool, list[str]]:
    """Streams a classic build into a log file, showing each step; returns (ok, log lines)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    ok = True
    deadline = time.monotonic() + timeout
    with open(log_path, "w") as log:
        stream = engine.api.build(
            fileobj=io.BytesIO(context),
            custom_context=True,
            tag=tag,
            rm=True,
            forcerm=True,
            decode=True,
            buildargs=buildargs or {},
            timeout=int(timeout),
            network_mode=network_mode,
        )
        for chunk in _chunks(stream, timeout):
            text = chunk.get("stream") or ""
            if "error" in chunk:
                ok = False
                text = f"ERROR: {chunk['error']}\n"
            if not text:
                continue
            log.write(text)
            for line in text.splitlines():
                lines.append(line)
                step = STEP_LINE.match(line)
                if step:
                    say(subject, f"step {step.group(1)}/{step.group(2)}: {step.group(3)[:70]}")
            if time.monotonic() > deadline:
                ok = False
                lines.append(f"ERROR: the build did not finish within {timeout:.0f} s")
                log.write(lines[-1] + "\n")
                break
    return ok, lines


def _chunks(stream: Iterator[dict[str, Any]], timeout: float) -> Iterator[dict[str, Any]]:
    """The build's output; a failed connection (a build silent for longer than its timeout, or
    an engine that went away) ends it with an error chunk that says which, not an exception."""
    try:
        yield from stream
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
        reason = one_line(exc, 200)
        if "timed out" in reason.lower():
            yield {"error": f"the build did not finish within {timeout:.0f} s (silent that long)"}
        else:
            yield {"error": f"the Docker engine failed during the build: {reason}"}
