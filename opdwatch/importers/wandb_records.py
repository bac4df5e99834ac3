"""Read a wandb run file (``run-<id>.wandb``) offline: its framing, and wandb's own protobuf ``Record``.

wandb has no public offline history reader since ``wandb sync --view`` and the Python datastore went, so
opdwatch owns this one. What it relies on, checked against wandb 0.31.0 (the file's writer is wandb-core):

- the header: ``:W&B``, the magic 0xBEE1 little-endian, format version 0 (7 bytes);
- LevelDB-log framing from byte 0: 32 KiB blocks; a record header is CRC-32 (IEEE, seeded with the type byte,
  unmasked), a uint16 length and a type (1 full, 2 first, 3 middle, 4 last); fewer than 7 bytes left in a
  block are zero padding;
- each assembled payload parses as ``wandb.proto.wandb_internal_pb2.Record``: history rows in
  ``history.item[]`` (``key`` or ``nested_key``, ``value_json``) with ``history.step.num``, config in
  ``config.update[]``, the writer's version in ``header.version_info.producer``.

Outside the checked wandb range (installed, or the file's producer) the reader stops with one line unless the
caller accepts the risk. A file cut mid-record yields every whole record before the cut and says where.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from opdwatch.errors import OpdwatchError

MAGIC = b":W&B" + struct.pack("<H", 0xBEE1)
FILE_VERSION = 0
HEADER_LEN = 7
BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
# The wandb versions this reader was checked against: [low, high). Widen only after checking a version.
CHECKED_RANGE = ((0, 31), (0, 32))
RANGE_TEXT = ">=0.31,<0.32"


@dataclass
class WandbRun:
    path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)  # history rows: {"_step": n, key: value, ...}
    config: dict[str, Any] = field(default_factory=dict)
    producer: str | None = None                                # wandb version that wrote the file
    problem: str | None = None                                 # why reading stopped early, if it did
    records: int = 0


def _version_tuple(text: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _in_range(text: str) -> bool:
    v = _version_tuple(text)
    return v is not None and CHECKED_RANGE[0] <= v < CHECKED_RANGE[1]


def check_installed(any_version: bool) -> Any:
    """wandb's ``Record`` class, after checking the installed wandb against the checked range."""
    try:
        installed = metadata.version("wandb")
    except metadata.PackageNotFoundError:
        raise OpdwatchError("reading a .wandb file needs wandb's protobuf classes: pip install "
                            f"'wandb{RANGE_TEXT}' (or 'opdwatch[wandb]')") from None
    if not any_version and not _in_range(installed):
        raise OpdwatchError(f"wandb {installed} is installed; the .wandb reader was checked with wandb{RANGE_TEXT} "
                            "(install that, or pass --any-wandb-version to try anyway)")
    from wandb.proto import wandb_internal_pb2  # heavy: only when a file is read

    return wandb_internal_pb2.Record


def payloads(data: bytes) -> tuple[list[bytes], str | None]:
    """The whole records of a run file's bytes, and a sentence about where reading stopped early (or None)."""
    if data[:6] != MAGIC:
        raise OpdwatchError("not a wandb run file (no :W&B header)")
    if len(data) < HEADER_LEN or data[6] != FILE_VERSION:
        raise OpdwatchError(f"wandb run file format version {data[6] if len(data) > 6 else '?'} is not the "
                            f"version {FILE_VERSION} this reader knows")
    out: list[bytes] = []
    pending: list[bytes] | None = None
    pos = HEADER_LEN
    while pos < len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # the writer zero-pads a block tail too short for a header
            pos += left
            continue
        if pos + 7 > len(data):
            return out, f"cut mid-record at byte {pos} (a partial record header)"
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if kind == 0 and length == 0:  # zero fill (a preallocated or padded tail): next block
            pos += left
            continue
        end = pos + 7 + length
        if end > len(data):
            return out, f"cut mid-record at byte {pos} ({end - len(data)} bytes missing)"
        chunk = data[pos + 7:end]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc or kind > _LAST or length > left - 7:
            return out, f"damaged record at byte {pos} (checksum or header does not match)"
        pos = end
        if kind == _FULL:
            out.append(chunk)
        elif kind == _FIRST:
            pending = [chunk]
        elif pending is not None:
            pending.append(chunk)
            if kind == _LAST:
                out.append(b"".join(pending))
                pending = None
    if pending is not None:
        return out, "cut mid-record at the end of the file (a record's last fragment is missing)"
    return out, None


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def read(path: Path, *, any_version: bool = False) -> WandbRun:
    """Every history row, the config and the producer version of one ``.wandb`` file."""
    record_cls = check_installed(any_version)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OpdwatchError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        chunks, problem = payloads(data)
    except OpdwatchError as exc:
        raise OpdwatchError(f"{path}: {exc}") from None
    run = WandbRun(path, problem=problem)
    for chunk in chunks:
        record = record_cls()
        try:
            record.ParseFromString(chunk)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError; the record is unreadable, the rest is not
            run.problem = run.problem or "a record did not parse as wandb's Record"
            continue
        run.records += 1
        _take(run, record)
    if run.producer is not None and not any_version and not _in_range(run.producer):
        raise OpdwatchError(f"{path}: written by wandb {run.producer.split('+')[0]}; the reader was checked with "
                            f"wandb{RANGE_TEXT} (pass --any-wandb-version to try anyway)")
    return run


def _take(run: WandbRun, record: Any) -> None:
    kind = record.WhichOneof("record_type")
    if kind == "header":
        run.producer = record.header.version_info.producer or None
    elif kind == "history":
        row = {_key(item): _value(item.value_json) for item in record.history.item}
        if record.history.HasField("step"):
            row.setdefault("_step", record.history.step.num)
        run.rows.append(row)
    elif kind in ("config", "run"):
        items = record.config.update if kind == "config" else record.run.config.update
        run.config.update({_key(item): _value(item.value_json) for item in items})
