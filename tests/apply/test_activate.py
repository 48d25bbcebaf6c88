"""Which live activation follows which changed file (each only when its inputs changed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from synapse_os.apply import activate
from synapse_os.apply.plan import make_plan
from synapse_os.profile import load_profile
from synapse_os.tunables import SystemState
from tests.conftest import PROFILES


@pytest.fixture
def with_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the branch for a machine where systemd is PID 1 (this CI box has none)."""
    monkeypatch.setattr(activate, "systemd_running", lambda: True)


def names(acts: list[activate.Activation]) -> list[str]:
    return [" ".join(a.argv) for a in acts]


def test_each_file_maps_to_its_activation(with_systemd: None) -> None:
    state = SystemState(active=("synapse-runtime.service",))
    acts = activate.plan_activations(
        ["etc/sysctl.d/90-synapse.conf", "etc/tmpfiles.d/synapse-sysfs.conf",
         "etc/sysusers.d/synapse.conf", "etc/systemd/zram-generator.conf",
         "etc/systemd/journald.conf.d/90-synapse.conf"],
        ["synapse-runtime.service"], [], ["cups.service"], state)
    assert names(acts) == [
        "systemd-sysusers /etc/sysusers.d/synapse.conf",  # users before tmpfiles use them
        "systemctl daemon-reload",
        "systemd-tmpfiles --create /etc/tmpfiles.d/synapse-sysfs.conf",
        "sysctl --system",
        "systemctl restart systemd-journald",
        "systemctl restart systemd-zram-setup@zram0.service",
        "systemctl stop cups.service",
        "systemctl start synapse-runtime.service",
    ]


def test_a_running_engine_restarts_for_its_new_config_or_unit(with_systemd: None) -> None:
    """A model pinned by `synapse model add` reaches the engine with the apply that renders it."""
    state = SystemState(service_unit="synapse-runtime.service")
    for changed in (["etc/synapse/runtime.yaml"],
                    ["etc/systemd/system/synapse-runtime.service.d/90-tuning.conf"]):
        assert names(activate.plan_activations(changed, [], [], [], state))[-1] == \
            "systemctl try-restart --no-block synapse-runtime.service"
    assert "systemctl try-restart --no-block synapse-runtime.service" not in names(
        activate.plan_activations(["etc/sysctl.d/90-synapse.conf"], [], [], [], state))
    # enabled (and started) by this apply: no second start
    assert not any("synapse-runtime" in n for n in names(activate.plan_activations(
        ["etc/synapse/runtime.yaml"], ["synapse-runtime.service"], [], [], state)))


def test_only_what_changed(with_systemd: None) -> None:
    acts = activate.plan_activations(["etc/sysctl.d/90-synapse.conf"], [], [], [],
                                     SystemState())
    assert names(acts) == ["sysctl --system"]
    assert activate.plan_activations(["etc/hostname"], [], [], [], SystemState()) == []


def test_without_systemd_only_offline_tools() -> None:
    assert not activate.systemd_running()  # this machine: no systemd as PID 1
    acts = activate.plan_activations(
        ["etc/sysctl.d/90-synapse.conf", "etc/systemd/system/x.service"], ["x.service"], [],
        [], SystemState(active=("x.service",)))
    assert names(acts) == ["sysctl --system"]


def test_removed_zram_config_stops_the_device(with_systemd: None) -> None:
    acts = activate.plan_activations(["etc/systemd/zram-generator.conf"], [], [], [],
                                     SystemState(), removed=["etc/systemd/zram-generator.conf"])
    assert "systemctl stop systemd-zram-setup@zram0.service" in names(acts)


def test_reboot_reasons() -> None:
    reasons = activate.reboot_reasons(["etc/kernel/cmdline", "boot/loader/loader.conf",
                                       "etc/sysctl.d/90-synapse.conf"])
    assert len(reasons) == 2 and any("command line" in r for r in reasons)


def test_target_tree_gets_no_live_activation(root: Path) -> None:
    plan = make_plan(load_profile(PROFILES / "nvidia-gpu.yaml"), root)
    assert not plan.live and plan.activations == []


def test_switching_isolation_hands_the_port_between_engine_and_socket(
        with_systemd: None) -> None:
    """On: the socket is not started beside the engine that still listens on its port; the
    engine's restart pulls it in. Off: the socket lets the port go before the restart."""
    state = SystemState(service_unit="synapse-runtime.service",
                        active=("synapse-runtime.service", "synapse-runtime.socket"))
    unit, socket_unit = ("etc/systemd/system/synapse-runtime.service",
                         "etc/systemd/system/synapse-runtime.socket")
    on = names(activate.plan_activations([unit, socket_unit], ["synapse-runtime.socket"], [],
                                         [], state))
    assert on == ["systemctl daemon-reload",
                  "systemctl try-restart --no-block synapse-runtime.service"]
    off = names(activate.plan_activations([unit, socket_unit], [], [], [],
                                          SystemState(service_unit="synapse-runtime.service"),
                                          removed=[socket_unit]))
    assert off[-2:] == ["systemctl stop synapse-runtime.socket",
                        "systemctl try-restart --no-block synapse-runtime.service"]
