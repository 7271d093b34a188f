"""Run records: JSON Lines under results/, schema-versioned, append-only, one file per machine.

* Append: one os.write() of one complete line to a file opened O_APPEND, under an
  exclusive flock, so two processes appending at once never interleave, and a process
  killed mid-write leaves at worst one damaged last line.
* Read: a damaged line (truncated, not JSON, wrong schema) is reported and skipped; the
  lines around it are kept. Nothing is ever rewritten.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import re
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parent.parent


def results_dir() -> Path:
    return Path(os.environ.get("FLASHCORE_RESULTS", REPO_ROOT / "results"))


def machine_slug(device: str | None = None) -> str:
    """File name stem: the GPU's name where there is one, else cpu-<host>."""
    name = device or f"cpu-{socket.gethostname()}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def record_path(device: str | None = None) -> Path:
    return results_dir() / f"runs-{machine_slug(device)}.jsonl"


def git_info(cwd: Path = REPO_ROOT) -> dict:
    """Commit, subject, date and dirtiness of the checkout. Where the tree is a copy without
    .git (the lent GPU machine), FLASHCORE_GIT_COMMIT / _SUBJECT / _DATE / _DIRTY say it."""
    if os.environ.get("FLASHCORE_GIT_COMMIT"):
        return {"commit": os.environ["FLASHCORE_GIT_COMMIT"], "subject": os.environ.get("FLASHCORE_GIT_SUBJECT"),
                "commit_date": os.environ.get("FLASHCORE_GIT_DATE"),
                "dirty": os.environ.get("FLASHCORE_GIT_DIRTY", "0") == "1"}
    def git(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    try:
        head = git("log", "-1", "--format=%H%x00%s%x00%cI")
        if head.returncode != 0:
            return {"commit": None, "subject": None, "commit_date": None, "dirty": None}
        commit, subject, date = head.stdout.strip().split("\x00")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        return {"commit": commit, "subject": subject, "commit_date": date, "dirty": dirty}
    except (OSError, subprocess.SubprocessError, ValueError):
        return {"commit": None, "subject": None, "commit_date": None, "dirty": None}


def new_record(kind: str, **fields) -> dict:
    """A record skeleton: schema, id, time, git state; the caller adds the rest."""
    rec = {"schema": SCHEMA_VERSION, "kind": kind, "run_id": uuid.uuid4().hex[:12],
           "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    rec.update({f"git_{k}": v for k, v in git_info().items()})
    rec.update(fields)
    return rec


def append(record: dict, path: Path | None = None) -> Path:
    """Append one record as one line; safe under concurrent appenders."""
    path = Path(path) if path else record_path(record.get("device"))
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, default=_json_default) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # A line left without its newline by a killed writer must not swallow this one.
        if os.fstat(fd).st_size > 0:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = b"\n" + line
        os.write(fd, line)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return path


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)


@dataclass
class Record:
    """A typed view of one line; .data holds every field as written."""
    data: dict
    source: str = ""
    line: int = 0

    def __getattr__(self, name):
        try:
            return self.__dict__["data"][name]
        except KeyError:
            raise AttributeError(name) from None

    def get(self, key, default=None):
        return self.data.get(key, default)


@dataclass
class ReadResult:
    records: list = field(default_factory=list)
    damaged: list = field(default_factory=list)   # "file:line: why"


def read(paths=None) -> ReadResult:
    """Every record of the given files (default: all results/runs-*.jsonl), oldest first."""
    if paths is None:
        paths = sorted(results_dir().glob("runs-*.jsonl"))
    out = ReadResult()
    for p in map(Path, paths):
        if not p.exists():
            continue
        with open(p, "rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    d = json.loads(raw)
                    if not isinstance(d, dict) or d.get("schema") != SCHEMA_VERSION:
                        raise ValueError(f"schema {d.get('schema') if isinstance(d, dict) else '?'} is not {SCHEMA_VERSION}")
                except (ValueError, UnicodeDecodeError) as e:
                    out.damaged.append(f"{p.name}:{n}: {type(e).__name__}: {str(e)[:80]}")
                    continue
                out.records.append(Record(d, p.name, n))
    out.records.sort(key=lambda r: r.get("time", ""))
    return out
