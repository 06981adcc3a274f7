"""An append-only JSONL audit trail in which each record holds the SHA-256 of the one before it.

Record fields: seq (0, 1, ...), time, agent, tool, decision, rule, args (the SHA-256 of each argument's
canonical JSON, never the values), prev (the previous record's hash, 64 zeros for the first) and hash (the
SHA-256 of the record's canonical JSON without "hash"). Editing, deleting, inserting or reordering records
breaks the chain at a place that verify() names. Each record is written and flushed with one write call.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical(obj).encode("utf-8")).hexdigest()


class AuditLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.seq, self.prev = 0, GENESIS
        if self.path.exists() and self.path.stat().st_size:
            problems, last = verify(self.path)
            if problems:
                raise ValueError(f"{self.path}: refusing to append to a broken audit trail: {problems[0]}")
            self.seq, self.prev = last["seq"] + 1, last["hash"]

    def append(self, agent: str, tool: str, decision: str, rule: str, args: dict | None = None) -> dict:
        with self.lock:
            record = {"seq": self.seq, "time": time.time(), "agent": agent, "tool": tool, "decision": decision,
                      "rule": rule, "args": {k: digest(v) for k, v in (args or {}).items()}, "prev": self.prev}
            record["hash"] = digest(record)
            line = (canonical(record) + "\n").encode("utf-8")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
            self.seq, self.prev = self.seq + 1, record["hash"]
            return record


def verify(path: str | Path) -> tuple[list[str], dict | None]:
    """(problems, last good record): each problem names the line and what is wrong there."""
    problems, prev, last = [], GENESIS, None
    lines = Path(path).read_bytes().splitlines()
    for n, raw in enumerate(lines, 1):
        try:
            record = json.loads(raw.decode("utf-8"))
            claimed = record.pop("hash")
        except UnicodeDecodeError:
            problems.append(f"line {n}: not UTF-8 text")
            continue
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
            problems.append(f"line {n}: not an audit record")
            continue
        if not isinstance(record.get("seq"), int) or isinstance(record.get("seq"), bool):
            problems.append(f"line {n}: its record number is not an integer")
            continue
        if digest(record) != claimed:
            problems.append(f"line {n}: record {record.get('seq')} was edited (its hash does not match its content)")
        elif record.get("prev") != prev:
            expected = 0 if last is None else last["seq"] + 1
            what = "inserted, or records before it deleted or reordered"
            problems.append(f"line {n}: record {record.get('seq')} does not follow record {expected - 1} ({what})")
        elif record.get("seq") != (0 if last is None else last["seq"] + 1):
            problems.append(f"line {n}: record numbers jump to {record.get('seq')}")
        record["hash"] = claimed
        prev, last = claimed, record
    return problems, last
