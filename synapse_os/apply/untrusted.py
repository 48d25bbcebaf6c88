"""Transaction journals are untrusted input: whatever a target root holds was possibly
planted there (a disk image from elsewhere, another user of a shared tree). Every path a
journal names is confined to its root and transaction directory, every value is checked
for its type, and anything else refuses the whole journal with one sentence, before
rollback or apply acts on any of it."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from synapse_os.errors import UserError
from synapse_os.profile.model import SYSFS_FIELDS
from synapse_os.profile.types import UNIT_NAME

TX_ID = re.compile(r"\d{4,}-\d{8}T\d{6}Z")
BACKUP_NAME = re.compile(r"\d{4,}")
SHA256_OR_EMPTY = re.compile(r"([0-9a-f]{64})?")
STATES = {"in-progress", "applied", "rolling-back", "rolled-back", "failed"}
FILE_KEYS = {"kind", "mode", "uid", "gid", "sha256", "link"}
UNIT_DIR = "etc/systemd/system/"
# Kernel values apply may remember: a sysctl, or a file of a profile field that is one
# sysfs file (its glob's [0-9]* standing for a number), nothing else.
LIVE_PATH = re.compile("|".join(
    [r"/proc/sys/[a-z0-9_]+(/[a-z0-9_-]+)+"]
    + [re.escape(f.path).replace(re.escape("[0-9]*"), r"\d+") for f in SYSFS_FIELDS]))
LIVE_VALUE = re.compile(r"[A-Za-z0-9_ \t.,:/+@=\[\]-]{0,256}")


class UntrustedJournal(UserError):
    pass


def inside(root: Path, path: Path) -> bool:
    """Whether `path`, with every symlink resolved, stays inside `root` (resolved too)."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip("/") + "/")


def confined(root: Path, rel: object, what: str, refusing: str = "refusing it") -> Path:
    """root/rel for a relative path read from untrusted data: normalised (no '', '.',
    '..' parts), no NUL or newline, and its directory resolving inside root."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or re.search(r"[\x00\n]", rel) \
            or any(part in ("", ".", "..") for part in rel.split("/")):
        raise UntrustedJournal(f"{what}: {rel!r} is not a normalised path inside the root; "
                               f"{refusing}")
    path = root / rel
    if not inside(root, path.parent):
        raise UntrustedJournal(f"{what}: {rel!r} leads outside {root} through a symlink; "
                               f"{refusing}")
    return path


def check_state_path(root: Path, path: Path) -> None:
    """Refuse a synapse state path (var/lib/synapse/…) that a symlink leads out of root."""
    if not inside(root, path):
        raise UntrustedJournal(
            f"{path}: leads outside {root} through a symlink; refusing to keep synapse "
            "transaction data there"
        )


WHOLE = "refusing the whole journal"


def _need(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise UntrustedJournal(f"{where}: {what}; {WHOLE}")


def _opt_str(value: object) -> bool:
    return value is None or isinstance(value, str)


def _str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _file_state(value: object, where: str) -> None:
    _need(isinstance(value, dict) and set(value) == FILE_KEYS, where, "not a file state")
    assert isinstance(value, dict)
    _need(value["kind"] in ("absent", "file", "link"), where, "unknown file kind")
    for key in ("mode", "uid", "gid"):
        v = value[key]
        _need(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32, where,
              f"{key} is not a number")
    _need(value["mode"] <= 0o7777, where, "mode out of range")
    _need(isinstance(value["sha256"], str) and bool(SHA256_OR_EMPTY.fullmatch(value["sha256"])),
          where, "sha256 is not a digest")
    link = value["link"]
    _need(link is None or (isinstance(link, str) and not re.search(r"[\x00\n]", link)), where,
          "link target is not a path")


def _file_entry(root: Path, tx_id: str, entry: dict[str, Any], where: str) -> None:
    keys = {"kind", "path", "action", "original", "new", "backup", "tmp", "created_dirs",
            "status"}
    _need(set(entry) == keys, where, "unexpected or missing fields")
    path = confined(root, entry["path"], f"{where} path", WHOLE)
    _need(entry["action"] in ("create", "modify", "remove"), where, "unknown action")
    _need(entry["status"] in ("started", "done"), where, "unknown status")
    _file_state(entry["original"], f"{where} original")
    _file_state(entry["new"], f"{where} new")
    backup = entry["backup"]
    _need(backup is None or (isinstance(backup, str) and bool(BACKUP_NAME.fullmatch(backup))),
          where, "backup is not a name in the transaction's backups/")
    _need(backup is not None or entry["original"]["kind"] != "file", where,
          "a replaced file has no backup")
    _need(entry["tmp"] == str(path.with_name(f".{path.name}.synapse-{tx_id}.tmp")
                              .relative_to(root)), where, "temporary path is not its own")
    dirs = entry["created_dirs"]
    _need(isinstance(dirs, list), where, "created_dirs is not a list")
    for d in dirs:
        _need(isinstance(d, str) and entry["path"].startswith(d + "/"), where,
              "a created directory is not a parent of the path")
        confined(root, d, f"{where} created_dirs", WHOLE)


def _link_state(value: object) -> bool:
    return isinstance(value, str) and (value in ("dir", "absent") or (
        value.startswith("link:") and not re.search(r"[\x00\n]", value)))


def _units_entry(root: Path, entry: dict[str, Any], where: str) -> None:
    _need(set(entry) == {"kind", "ops", "pre", "changes", "status"}, where,
          "unexpected or missing fields")
    _need(entry["status"] in ("started", "done"), where, "unknown status")
    ops = entry["ops"]
    _need(isinstance(ops, list) and all(
        isinstance(op, list) and len(op) == 2 and op[0] in ("enable", "disable")
        and isinstance(op[1], str) and bool(UNIT_NAME.fullmatch(op[1])) for op in ops),
        where, "ops are not enable/disable of unit names")
    for name, table in (("pre", entry["pre"]), ("changes", entry["changes"])):
        if table is None and name == "changes":
            continue
        _need(isinstance(table, dict), where, f"{name} is not a mapping")
        for rel, value in table.items():
            _need(isinstance(rel, str) and rel.startswith(UNIT_DIR), where,
                  f"{name} names a path outside {UNIT_DIR}")
            confined(root, rel, f"{where} {name}", WHOLE)
            pair = value if name == "changes" else [value, value]
            _need(isinstance(pair, list) and len(pair) == 2 and all(map(_link_state, pair)),
                  where, f"{name} holds an unknown link state")
        # rollback recreates these in order: nothing may lie below a path that is a link
        links = {rel for rel, v in table.items()
                 if any(str(x).startswith("link:") for x in (v if name == "changes" else [v]))}
        for rel in table:
            parts = rel.split("/")
            _need(not any("/".join(parts[:i]) in links for i in range(1, len(parts))), where,
                  f"{name} names a path below a symlink")


def check_journal(root: Path, tx_dir: Path, data: dict[str, Any]) -> None:
    """Refuse (UntrustedJournal) a journal that is not exactly what apply writes."""
    try:
        _check_journal(root, tx_dir, data)
    except (TypeError, AttributeError, KeyError, RecursionError):
        raise UntrustedJournal(f"{tx_dir / 'journal.json'}: a field has the wrong type; "
                               f"{WHOLE}") from None


def _check_journal(root: Path, tx_dir: Path, data: dict[str, Any]) -> None:
    where = str(tx_dir / "journal.json")
    expected = {"version", "id", "profile", "profile_hash", "live", "started", "state",
                "finished", "rolled_back", "entries", "live_values", "activations",
                "reboot_reasons", "warnings", "error"}
    _need(set(data) == expected, where, "unexpected or missing fields")
    _need(isinstance(data["id"], str) and bool(TX_ID.fullmatch(data["id"]))
          and data["id"] == tx_dir.name, where, "its id does not match its directory")
    _need(isinstance(data["state"], str) and data["state"] in STATES, where, "unknown state")
    _need(isinstance(data["live"], bool), where, "live is not true or false")
    _need(not data["live"] or os.path.realpath(root) == "/", where,
          "a journal of the running system found under another root")
    for key in ("profile", "profile_hash", "started"):
        _need(isinstance(data[key], str), where, f"{key} is not text")
    for key in ("finished", "rolled_back", "error"):
        _need(_opt_str(data[key]), where, f"{key} is not text")
    for key in ("reboot_reasons", "warnings"):
        _need(_str_list(data[key]), where, f"{key} is not a list of text")
    _need(isinstance(data["activations"], list), where, "activations is not a list")
    live_values = data["live_values"]
    _need(isinstance(live_values, dict), where, "live_values is not a mapping")
    for path, value in live_values.items():
        _need(bool(LIVE_PATH.fullmatch(path)) and ".." not in path.split("/"), where,
              f"live value {path!r} is not a kernel setting synapse manages")
        _need(isinstance(value, str) and bool(LIVE_VALUE.fullmatch(value)), where,
              f"live value of {path} is not a plain value")
    entries = data["entries"]
    _need(isinstance(entries, list), where, "entries is not a list")
    for n, entry in enumerate(entries):
        _need(isinstance(entry, dict), where, f"entry {n} is not a mapping")
        if entry.get("kind") == "file":
            _file_entry(root, data["id"], entry, f"{where} entry {n}")
        elif entry.get("kind") == "units":
            _units_entry(root, entry, f"{where} entry {n}")
        else:
            _need(False, where, f"entry {n} has an unknown kind")
