"""The result of a VM test: per-assertion outcomes, infrastructure errors, JUnit XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field

from synapse_os.tunables import Check


@dataclass(frozen=True)
class Outcome:
    id: str
    kind: str
    source: str
    expected: str
    actual: str
    status: str  # pass | fail | unknown
    seconds: float = 0.0

    @classmethod
    def of(cls, check: Check, status: str, actual: str, seconds: float = 0.0) -> Outcome:
        return cls(check.id, check.kind, check.source, check.expected, actual, status, seconds)


@dataclass
class VerifyAgreement:
    ran: bool
    note: str = ""
    compared: int = 0
    disagreements: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.ran and not self.disagreements


@dataclass
class VmReport:
    image: str
    profile: str
    accel: str
    boot: str  # direct | uefi
    outcomes: list[Outcome] = field(default_factory=list)
    verify: VerifyAgreement = field(default_factory=lambda: VerifyAgreement(False))
    infra_error: str | None = None
    console_tail: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "fail": 0, "unknown": 0}
        for o in self.outcomes:
            out[o.status] += 1
        return out

    @property
    def ok(self) -> bool:
        return (self.infra_error is None and bool(self.outcomes)
                and all(o.status != "fail" for o in self.outcomes)
                and (self.verify.ok or not self.verify.ran))

    def as_dict(self) -> dict[str, object]:
        return {
            "image": self.image, "profile": self.profile, "accel": self.accel,
            "boot": self.boot, "ok": self.ok, "counts": self.counts(),
            "infra_error": self.infra_error, "console_tail": self.console_tail,
            "verify": {**asdict(self.verify), "ok": self.verify.ok},
            "timings": self.timings,
            "assertions": [asdict(o) for o in self.outcomes],
        }

    def text(self) -> str:
        lines = []
        width = max((len(o.id) for o in self.outcomes), default=10)
        width = min(width, 70)
        for o in self.outcomes:
            line = f"{o.status.upper():7}  {o.id[:70]:{width}}"
            if o.status != "pass":
                line += f"  expected {o.expected!r}, got {o.actual[:120]!r}"
            lines.append(line)
        c = self.counts()
        lines.append(f"{c['pass']} pass, {c['fail']} fail, {c['unknown']} unknown "
                     f"({self.accel}, {self.boot} boot)")
        if self.verify.ran:
            if self.verify.disagreements:
                lines.append(f"synapse verify in the guest DISAGREES on "
                             f"{len(self.verify.disagreements)} of {self.verify.compared} checks:")
                for d in self.verify.disagreements:
                    lines.append(f"  {d['id']}: vm {d['vm']}, verify {d['verify']}")
            else:
                lines.append(f"synapse verify in the guest agrees on all "
                             f"{self.verify.compared} shared checks")
        elif self.verify.note:
            lines.append(f"synapse verify: {self.verify.note}")
        if self.infra_error:
            lines.append(f"INFRASTRUCTURE ERROR (not an assertion failure): {self.infra_error}")
        if self.timings:
            lines.append("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()))
        return "\n".join(lines) + "\n"

    def junit_xml(self) -> str:
        c = self.counts()
        total_s = sum(self.timings.values())
        suite = ET.Element("testsuite", {
            "name": f"synapse-vm.{self.profile}",
            "tests": str(len(self.outcomes) + 1 + (1 if self.verify.ran else 0)),
            "failures": str(c["fail"] + (0 if self.verify.ok or not self.verify.ran else 1)),
            "errors": str(1 if self.infra_error else 0),
            "skipped": str(c["unknown"]),
            "time": f"{total_s:.1f}",
        })
        props = ET.SubElement(suite, "properties")
        for k, v in (("image", self.image), ("accel", self.accel), ("boot", self.boot)):
            ET.SubElement(props, "property", {"name": k, "value": v})
        boot = ET.SubElement(suite, "testcase", {
            "classname": f"{self.profile}.boot", "name": "boot to multi-user",
            "time": f"{self.timings.get('boot', 0.0):.1f}"})
        if self.infra_error:
            err = ET.SubElement(boot, "error", {"message": self.infra_error.splitlines()[0],
                                                "type": "infrastructure"})
            err.text = self.infra_error + "\n" + self.console_tail
        for o in self.outcomes:
            case = ET.SubElement(suite, "testcase", {
                "classname": f"{self.profile}.{o.kind}", "name": o.id, "time": f"{o.seconds:.2f}"})
            if o.status == "fail":
                f = ET.SubElement(case, "failure", {
                    "message": f"expected {o.expected!r}, got {o.actual[:200]!r}",
                    "type": "assertion"})
                f.text = f"source: {o.source}\nexpected: {o.expected}\nactual: {o.actual}"
            elif o.status == "unknown":
                ET.SubElement(case, "skipped",
                              {"message": f"not visible in this guest: {o.actual}"})
        if self.verify.ran:
            case = ET.SubElement(suite, "testcase", {"classname": f"{self.profile}.verify",
                                                      "name": "synapse verify agrees"})
            if self.verify.disagreements:
                f = ET.SubElement(case, "failure", {
                    "message": f"{len(self.verify.disagreements)} disagreements",
                    "type": "verify"})
                f.text = "\n".join(f"{d['id']}: vm {d['vm']}, verify {d['verify']}"
                                   for d in self.verify.disagreements)
        ET.indent(suite)
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, "unicode") + "\n"
