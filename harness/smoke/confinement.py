"""What of libvirt's host confinement a cell cannot exercise, as the runner finds it in the cell:
the security models libvirt reports in its capabilities, the settings qemu.conf makes, the cgroup
controllers and the D-Bus system bus the container has. Each entry says what and why, so that a
result never passes for more than it tested (README, "Container privileges")."""

import os
import re
import xml.etree.ElementTree as ElementTree

import libvirt

QEMU_CONF = "/etc/libvirt/qemu.conf"
CGROUP_ROOT = "/sys/fs/cgroup"
DBUS_SOCKET = "/run/dbus/system_bus_socket"
SETTING_RE = re.compile(r"^\s*([a-z_]+)\s*=\s*(.*)$")


def qemu_conf(filename=QEMU_CONF):
    """The settings qemu.conf makes, as their text ("[ ]", '"root"', "0"); a list may span lines.
    A setting made twice counts as libvirt reads it: the last one."""
    settings = {}
    try:
        with open(filename, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return settings
    key, value = None, ""
    for line in lines:
        line = line.split("#", 1)[0].rstrip()
        if key is not None:  # inside a list
            value += " " + line.strip()
        else:
            match = SETTING_RE.match(line)
            if not match:
                continue
            key, value = match.group(1), match.group(2).strip()
        if value.count("[") <= value.count("]"):
            settings[key] = value
            key = None
    return settings


def words(value):
    """The strings of a qemu.conf value: '[ "mount" ]' -> ["mount"], '"none"' -> ["none"]."""
    return re.findall(r'"([^"]*)"', value or "")


def security_models(capabilities):
    """{model: [base labels]} of the host's <secmodel> elements in the capabilities XML."""
    models = {}
    try:
        host = ElementTree.fromstring(capabilities).find("host")
    except ElementTree.ParseError:
        return models
    for secmodel in host.findall("secmodel") if host is not None else []:
        name = (secmodel.findtext("model") or "").strip()
        if name:
            labels = [(label.text or "").strip() for label in secmodel.findall("baselabel")]
            models[name] = labels
    return models


def cgroup_controllers(root=CGROUP_ROOT):
    """The cgroup controllers mounted in the container (v2: the root's cgroup.controllers; v1:
    the controllers' own mounts), which libvirt could place QEMU under."""
    try:
        with open(os.path.join(root, "cgroup.controllers")) as handle:
            return handle.read().split()
    except OSError:
        pass
    try:
        return sorted(entry for entry in os.listdir(root) if entry != "unified")
    except OSError:
        return []


def not_exercised(conn, conf=None, controllers=None, bus=None):
    """[{feature, reason}]: each part of libvirt's confinement of QEMU this cell leaves out, with
    what the runner saw. conf, controllers and bus stand in for the cell's files in tests."""
    conf = qemu_conf() if conf is None else conf
    controllers = cgroup_controllers() if controllers is None else controllers
    bus = os.path.exists(DBUS_SOCKET) if bus is None else bus
    try:
        models = security_models(conn.getCapabilities())
    except libvirt.libvirtError as exc:
        models = None
        why_models = f"libvirt's capabilities could not be read ({str(exc).strip()[:100]})"
    if models is not None:
        named = ", ".join(sorted(models)) or "none"
        why_models = f"libvirt reports the security model {named}"
        if "security_driver" in conf:
            why_models += f" (qemu.conf security_driver = {conf['security_driver']})"
    found = []
    for model, feature in (("apparmor", "apparmor"), ("selinux", "selinux")):
        if not models or model not in models:
            found.append((feature, f"QEMU is not confined: {why_models}"))
    dac = (models or {}).get("dac")
    if dac is None or any(label.startswith("+0:") for label in dac):
        label = f"libvirt's DAC label is {dac[0]}" if dac else why_models
        user = f", qemu.conf user = {conf['user']}" if "user" in conf else ""
        found.append(("dac", f"QEMU runs as root ({label}{user}): no file ownership is changed"))
    if "remember_owner" in conf and conf["remember_owner"].strip() == "0":
        found.append(("remember-owner", "qemu.conf remember_owner = 0: no ownership is restored"))
    if "cgroup_controllers" in conf and not words(conf["cgroup_controllers"]):
        found.append(
            (
                "cgroups",
                f"qemu.conf cgroup_controllers = {conf['cgroup_controllers']}: QEMU "
                "gets no cgroup of its own and no CPU, memory or I/O tuning",
            )
        )
    elif not controllers:
        found.append(("cgroups", "no cgroup controller is mounted in the container"))
    if "namespaces" in conf and not words(conf["namespaces"]):
        found.append(
            (
                "namespaces",
                f"qemu.conf namespaces = {conf['namespaces']}: QEMU shares the "
                "container's mount namespace and /dev",
            )
        )
    if not bus:
        found.append(
            (
                "machined",
                f"no D-Bus system bus ({DBUS_SOCKET}): QEMU is not registered with "
                "systemd-machined",
            )
        )
    return [{"feature": feature, "reason": reason} for feature, reason in found]
