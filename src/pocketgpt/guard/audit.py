"""An append-only JSONL audit trail in which each record holds the hash of the one before it, anchored by a
head record written beside it and, with a key, authenticated.

Record fields: seq (0, 1, ...), time, agent, tool, decision, rule, args (a digest of each argument's
canonical JSON, never the values), prev (the previous record's hash, 64 zeros for the first), keyed, and
hash (the digest of the record's canonical JSON without "hash"). Editing, deleting, inserting or reordering
records breaks the chain at a place that verify() names. The head, LOG.head, holds the number of records and
the last hash, replaced (through a temporary file) after each record, so deleting records from the end is
found too.

Without a key the digests are SHA-256: anyone who can write the log can also rewrite every hash after an
edit, and an argument's digest can be confirmed by hashing guesses (an amount, an IBAN). With a key (kept
outside the log: AuditLog(path, key=...), `pocketgpt guard verify LOG --key-file FILE`) every digest is an
HMAC-SHA256 under it, and the head carries one too: a rewritten chain, a forged head or a guessed argument
cannot be made to verify without the key. Each record is written and flushed with one write call.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def digest(obj: Any, key: bytes | None = None) -> str:
    data = canonical(obj).encode("utf-8")
    return hmac.new(key, data, hashlib.sha256).hexdigest() if key else hashlib.sha256(data).hexdigest()


def head_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".head")


def _head(count: int, last: str, key: bytes | None) -> dict:
    head = {"count": count, "last": last}
    return {**head, "mac": digest(head, key)} if key else head


class AuditLog:
    def __init__(self, path: str | Path, key: bytes | None = None):
        self.path, self.key = Path(path), key
        self.lock = threading.Lock()
        self.seq, self.prev = 0, GENESIS
        if self.path.exists() and self.path.stat().st_size:
            problems, last = verify(self.path, key)
            if problems:
                raise ValueError(f"{self.path}: refusing to append to a broken audit trail: {problems[0]}")
            self.seq, self.prev = last["seq"] + 1, last["hash"]

    def append(self, agent: str, tool: str, decision: str, rule: str, args: dict | None = None) -> dict:
        with self.lock:
            record = {"seq": self.seq, "time": time.time(), "agent": agent, "tool": tool, "decision": decision,
                      "rule": rule, "args": {k: digest(v, self.key) for k, v in (args or {}).items()},
                      "prev": self.prev, "keyed": self.key is not None}
            record["hash"] = digest(record, self.key)
            line = (canonical(record) + "\n").encode("utf-8")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
            self.seq, self.prev = self.seq + 1, record["hash"]
            _replace(head_path(self.path), canonical(_head(self.seq, self.prev, self.key)) + "\n")
            return record


def _replace(path: Path, text: str) -> None:
    """Write text to a temporary file beside path, then rename it into place (a reader sees the old head or the
    new one, never half of one). The guard uses the standard library only, hence not pocketgpt.files."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def verify(path: str | Path, key: bytes | None = None) -> tuple[list[str], dict | None]:
    """(problems, last good record): each problem names the line and what is wrong there. Records written with
    a key are checked only with that key (without it, verify says so)."""
    problems, prev, last, headed = [], GENESIS, None, False
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
        keyed = record.get("keyed") is True
        headed = headed or "keyed" in record  # written since logs have a head (older records lack the field)
        if keyed and key is None:
            problems.append(f"line {n}: record {record['seq']} is keyed: verify it with the key (--key-file)")
            return problems, last
        if not hmac.compare_digest(digest(record, key if keyed else None), str(claimed)):
            what = "edited, or its hash rewritten without the key" if keyed else "edited"
            problems.append(f"line {n}: record {record.get('seq')} was {what} (its hash does not match its content)")
        elif key is not None and not keyed:
            problems.append(f"line {n}: record {record.get('seq')} is not keyed, in a log checked with a key")
        elif record.get("prev") != prev:
            expected = 0 if last is None else last["seq"] + 1
            what = "inserted, or records before it deleted or reordered"
            problems.append(f"line {n}: record {record.get('seq')} does not follow record {expected - 1} ({what})")
        elif record.get("seq") != (0 if last is None else last["seq"] + 1):
            problems.append(f"line {n}: record numbers jump to {record.get('seq')}")
        record["hash"] = claimed
        prev, last = claimed, record
    problems += _check_head(path, last, key, headed)
    return problems, last


def _check_head(path: str | Path, last: dict | None, key: bytes | None, required: bool) -> list[str]:
    where = head_path(path)
    count = 0 if last is None else last["seq"] + 1
    try:
        head = json.loads(where.read_text(encoding="utf-8"))
        claimed = head.pop("mac", None)
        head_count, head_last = head["count"], head["last"]
    except FileNotFoundError:
        if count == 0 or not required:  # an empty log, or one written before logs had a head
            return []
        return [f"{where.name}: missing, so records deleted from the end cannot be found"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return [f"{where.name}: not a head record"]
    if key is not None and (claimed is None or not hmac.compare_digest(digest(head, key), str(claimed))):
        return [f"{where.name}: forged or edited (its MAC does not match)"]
    if head_count != count or (last is not None and head_last != last["hash"]):
        return [f"{where.name}: the log should hold {head_count} records ending in {str(head_last)[:12]}..., "
                f"it holds {count}: records were deleted from the end, or added after the head was written"]
    return []
