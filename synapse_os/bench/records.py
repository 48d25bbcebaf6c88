"""Bench records on disk: NDJSON, one llama-bench test per line.

Each line is llama-bench's own JSONL object (its field names untouched, so llama.cpp's
scripts/compare-llama-bench.py reads the file: it drops keys it does not know) plus one
'synapse' object with the label, provenance, bandwidth and roofline.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synapse_os.bench.llamabench import REQUIRED_FIELDS, record_name
from synapse_os.errors import UserError
from synapse_os.userfile import read_user_text

SCHEMA = 1
SYNAPSE_FIELDS = ("schema", "label", "time", "real", "model", "llama_bench", "bandwidth",
                  "provenance")


@dataclass(frozen=True)
class Record:
    data: dict[str, Any]
    source: str  # file:line, for messages

    @property
    def synapse(self) -> dict[str, Any]:
        value = self.data["synapse"]
        assert isinstance(value, dict)
        return value

    @property
    def name(self) -> str:
        return record_name(self.data)

    @property
    def threads(self) -> int:
        return int(self.data["n_threads"])

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.threads)

    @property
    def samples(self) -> list[float]:
        return [float(x) for x in self.data["samples_ts"]]

    @property
    def label(self) -> str:
        return str(self.synapse["label"])

    @property
    def model_sha256(self) -> str:
        return str(self.synapse["model"]["sha256"])

    @property
    def roofline_fraction(self) -> float | None:
        roofline = self.synapse.get("roofline")
        return None if not roofline else float(roofline["fraction"])

    def build_identity(self) -> dict[str, Any]:
        """What makes two llama.cpp builds the same: commit, number, source and flags."""
        info = self.synapse["llama_bench"]
        return {
            "build_commit": self.data["build_commit"],
            "build_number": self.data.get("build_number"),
            "source_id": info.get("source_id"),
            "cmake_flags": info.get("cmake_flags"),
        }


def write(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Write NDJSON atomically: a temporary file in the same directory, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w") as fh:
            for record in records:
                fh.write(json.dumps(record, sort_keys=True) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _valid_samples(value: Any) -> bool:
    return (isinstance(value, list) and len(value) > 0
            and all(isinstance(x, int | float) and math.isfinite(x) and x > 0 for x in value))


def _check(data: Any, where: str) -> None:
    accepted = "a record written by `synapse bench run`"
    if not isinstance(data, dict):
        raise UserError(f"{where} is not a JSON object; expected {accepted}")
    missing = [f for f in REQUIRED_FIELDS if f not in data]
    if missing:
        raise UserError(f"{where} lacks the llama-bench field(s) {', '.join(missing)}; "
                        f"expected {accepted}")
    if not _valid_samples(data["samples_ts"]):
        raise UserError(f"{where} has no usable samples_ts (a non-empty list of positive "
                        f"numbers); expected {accepted}")
    block = data.get("synapse")
    if not isinstance(block, dict):
        raise UserError(f"{where} has no 'synapse' provenance block; expected {accepted}")
    missing = [f for f in SYNAPSE_FIELDS if f not in block]
    if missing:
        raise UserError(f"{where} lacks synapse.{', synapse.'.join(missing)}; expected {accepted}")
    if not isinstance(block["model"], dict) or not block["model"].get("sha256"):
        raise UserError(f"{where} lacks synapse.model.sha256; expected {accepted}")
    if not isinstance(block["llama_bench"], dict):
        raise UserError(f"{where} has a malformed synapse.llama_bench; expected {accepted}")


def load(path: Path) -> list[Record]:
    """Read and check a record file; every problem is one sentence naming file:line."""
    text = read_user_text(path, "record file", "an NDJSON file written by `synapse bench run`")
    records: list[Record] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where} is not valid JSON ({exc.msg}); expected one record per "
                            "line as written by `synapse bench run`") from None
        _check(data, where)
        records.append(Record(data, where))
    if not records:
        raise UserError(f"record file {path} is empty; expected NDJSON records written by "
                        "`synapse bench run`")
    seen: dict[tuple[str, int], str] = {}
    for record in records:
        if record.key in seen:
            raise UserError(f"{record.source} repeats test {record.name} at {record.threads} "
                            f"threads already recorded at {seen[record.key]}; keep one run per "
                            "file")
        seen[record.key] = record.source
    return records
