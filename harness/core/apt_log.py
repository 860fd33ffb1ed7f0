"""What apt said went wrong, read from a build's or a resolution's log: the status (failed or
unavailable) and the one-line reason a table shows. Pure: the log's lines and the cell."""

from __future__ import annotations

import re

from .model import Cell


def diagnose(lines: list[str], cell: Cell) -> tuple[str, str]:
    """(status, reason) of a failed build, from the log: archive problems make a cell unavailable."""
    # apt's errors come coloured through the classic builder.
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(lines))
    # Through the package cache, a host that does not resolve is the proxy's 503: same reason.
    text = re.sub(r" *\[IP: [^]\n]*\]", "", text)
    text = re.sub(
        r"\b503 +(?:Host not found|DNS error for hostname .*)",
        "Could not resolve the archive's host",
        text,
    )
    # First: a full disk breaks downloads too, and is not the archive's fault.
    full = r"(?i).*(?:no space left on device|have enough free space).*"
    if re.search(full, text):
        return "failed", "the build ran out of disk space: " + _first(text, full)
    expired = re.search(r"Release file for (\S+) is expired", text)
    if expired:
        names = ", ".join(name for name, _ in cell.sources)
        return (
            "unavailable",
            f"the Release file of {without_hosts(expired.group(1))} has expired; if that archive is a snapshot, "
            f"set check_valid_until: false on its source ({names}) in matrix.yaml",
        )
    if re.search(
        r"Could not resolve|Failed to fetch|Unable to connect|Temporary failure resolving", text
    ):
        return "unavailable", "source unreachable: " + _first(
            text,
            r".*(?:Could not resolve|Failed to fetch|Unable to connect|Temporary failure resolving).*",
        )
    missing_suite = re.search(
        r"The repository '\S+ (\S+) Release' does not have a Release file", text
    )
    if missing_suite:
        return "unavailable", f"suite not served: {missing_suite.group(1)} has no Release file"
    gone = re.search(r"Version '(\S+)' for '(\S+)' was not found", text)
    if gone and cell.locked_versions.get(gone.group(2)) == gone.group(1):
        return (
            "unavailable",
            f"locked version {gone.group(1)} of {gone.group(2)} is no longer served by the "
            "cell's sources (`hvgate matrix.resolve` locks what they serve now)",
        )
    if re.search(
        r"Unable to locate package|has no installation candidate|Version '.*' for '.*' was not found",
        text,
    ):
        return "unavailable", "package not in the source: " + _first(
            text, r".*(?:Unable to locate|no installation candidate|was not found).*"
        )
    unmet = _first(text, r"^ \S+ : Depends: .*")
    if unmet:
        return "failed", f"unmet dependency: {unmet}"
    return "failed", _first(text, r"^(?:E: |add-apt-source: |pin-source: ).*") or (
        lines[-1] if lines else "the build failed"
    )


def _first(text: str, pattern: str) -> str:
    match = re.search(pattern, text, re.MULTILINE)
    return without_hosts(match.group(0).strip()) if match else ""


def without_hosts(text: str) -> str:
    """Reasons end up in committed tables: archive host names stay in the build log only."""
    text = re.sub(r"\b[a-z]+://\S+", "<archive URL>", text)
    return re.sub(r"'[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+\.[a-z]{2,}'", "the archive's host", text)
