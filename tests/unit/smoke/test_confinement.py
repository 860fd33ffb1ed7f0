"""What of libvirt's confinement a cell leaves out, as harness/smoke/confinement.py finds it."""

from __future__ import annotations

import pytest

from harness.core.results import ReportError, parse_report
from tests.unit.smoke import test_smoke_runner

smoke = test_smoke_runner.smoke  # the fixture: harness.smoke imported against a stub libvirt

# The images' qemu.conf (images/context/configure-libvirt appends this to the distro's).
CONTAINER_CONF = """
# A comment: namespaces = [ "mount" ]
#user = "libvirt-qemu"
namespaces = [ ]
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
remember_owner = 0
"""
# What libvirt 4.0 to 11 report with security_driver = "none", QEMU as root.
CONTAINER_CAPS = """<capabilities><host><uuid>x</uuid>
<secmodel><model>none</model><doi>0</doi></secmodel>
<secmodel><model>dac</model><doi>0</doi>
<baselabel type='kvm'>+0:+0</baselabel><baselabel type='qemu'>+0:+0</baselabel></secmodel>
</host></capabilities>"""
# An Ubuntu compute node: AppArmor, QEMU as libvirt-qemu.
NODE_CAPS = """<capabilities><host>
<secmodel><model>apparmor</model><doi>0</doi></secmodel>
<secmodel><model>dac</model><doi>0</doi><baselabel type='kvm'>+64055:+108</baselabel></secmodel>
</host></capabilities>"""


class Conn:
    def __init__(self, caps):
        self.caps = caps

    def getCapabilities(self):
        if isinstance(self.caps, Exception):
            raise self.caps
        return self.caps


def features(found):
    return [entry["feature"] for entry in found]


def test_qemu_conf_is_read_as_libvirt_reads_it(smoke, tmp_path):
    conf = tmp_path / "qemu.conf"
    conf.write_text(
        CONTAINER_CONF + 'cgroup_controllers = [ "cpu",\n   "memory" ]  # two lines\nuser = "x"\n'
    )
    settings = smoke.confinement.qemu_conf(str(conf))
    assert settings["namespaces"] == "[ ]"
    assert settings["security_driver"] == '"none"'
    assert settings["user"] == '"x"'  # the last one counts
    assert smoke.confinement.words(settings["cgroup_controllers"]) == ["cpu", "memory"]
    assert smoke.confinement.qemu_conf(str(tmp_path / "missing")) == {}


def test_the_container_leaves_out_every_part_of_the_confinement(smoke, tmp_path):
    conf = tmp_path / "qemu.conf"
    conf.write_text(CONTAINER_CONF)
    settings = smoke.confinement.qemu_conf(str(conf))
    found = smoke.confinement.not_exercised(
        Conn(CONTAINER_CAPS), conf=settings, controllers=["cpu", "memory"], bus=False
    )
    assert features(found) == [
        "apparmor",
        "selinux",
        "dac",
        "remember-owner",
        "cgroups",
        "namespaces",
        "machined",
    ]
    why = {entry["feature"]: entry["reason"] for entry in found}
    assert "security model dac, none" in why["apparmor"]
    assert 'security_driver = "none"' in why["apparmor"]
    assert "DAC label is +0:+0" in why["dac"] and 'user = "root"' in why["dac"]
    assert "cgroup_controllers = [ ]" in why["cgroups"]
    assert "namespaces = [ ]" in why["namespaces"]
    assert all("\n" not in reason for reason in why.values())


def test_a_compute_node_exercises_what_it_has(smoke):
    found = smoke.confinement.not_exercised(
        Conn(NODE_CAPS), conf={}, controllers=["cpu", "memory"], bus=True
    )
    assert features(found) == ["selinux"]  # Ubuntu confines QEMU with AppArmor only


def test_what_the_runner_cannot_see_is_said_not_hidden(smoke):
    error = test_smoke_runner.StubLibvirtError("internal error: no capabilities")
    found = smoke.confinement.not_exercised(Conn(error), conf={}, controllers=[], bus=True)
    assert features(found) == ["apparmor", "selinux", "dac", "cgroups"]
    assert "could not be read (internal error: no capabilities)" in found[0]["reason"]
    assert found[-1]["reason"] == "no cgroup controller is mounted in the container"


def test_cgroup_controllers_of_v1_and_v2(smoke, tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    assert smoke.confinement.cgroup_controllers(str(tmp_path)) == [
        "cpuset",
        "cpu",
        "io",
        "memory",
        "pids",
    ]
    (tmp_path / "cgroup.controllers").unlink()
    for name in ("memory", "cpu,cpuacct", "unified"):
        (tmp_path / name).mkdir()
    assert smoke.confinement.cgroup_controllers(str(tmp_path)) == ["cpu,cpuacct", "memory"]
    assert smoke.confinement.cgroup_controllers(str(tmp_path / "none")) == []


def test_the_report_carries_them_as_features_and_reasons():
    report = {"format": 1, "runs": [], "not_exercised": [{"feature": "dac", "reason": "root"}]}
    assert parse_report(report)["not_exercised"] == [{"feature": "dac", "reason": "root"}]
    for bad in ([{"feature": "dac"}], [{"feature": "dac", "reason": 1}], ["dac"]):
        with pytest.raises(ReportError, match=r"not_exercised\[0\]"):
            parse_report({**report, "not_exercised": bad})
