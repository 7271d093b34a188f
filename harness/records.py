"""Run records: JSON Lines under results/, schema-versioned, append-only, one file per machine.

* Append: one os.write() of one complete line to a file opened O_APPEND, under an
  exclusive flock, so two processes appending at once never interleave, and a process
  killed mid-write leaves at worst one damaged last line.
* Read: a damaged line (truncated, not JSON, wrong schema, a field of the wrong type) or an
  unreadable file is reported and skipped; the lines around it are kept. Nothing is ever
  rewritten.
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


def png_path_problem(path, option: str = "--png") -> str | None:
    """Why a plot path would make savefig fail after the work (one line), or None: a format
    matplotlib does not write (its own list, picked by the extension as savefig does), a
    missing or read-only directory, a directory; matplotlib missing. Here on the ground floor
    so every layer can check its --png before its work starts; it returns the line rather
    than raise, as records may not import harness.errors (harness.track.history.check_png_path
    raises it as a UsageError)."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        return f"{option} needs matplotlib: pip install 'flashcore[plot]'"
    p = Path(path)
    formats = FigureCanvasBase.get_supported_filetypes()
    ext = p.suffix[1:].lower()
    if ext not in formats:
        what = f".{ext} is not a format matplotlib writes" if ext else "no extension to name the format"
        return f"{option} {path}: {what}; use one of .{', .'.join(sorted(formats))}"
    if p.is_dir():
        return f"{option} {path}: is a directory"
    if not p.parent.is_dir():
        return f"{option} {path}: no directory {p.parent}"
    if not os.access(p.parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        return f"{option} {path}: not writable"
    return None


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


# Types of the fields the harness reads from every record (sort, filter, group, compare): a
# line that parses but holds another type (say "time": 5) would crash those later, so read()
# skips it here and names the field. None means null is allowed; an absent field is fine.
FIELD_TYPES = {
    "time": (str,), "kind": (str,), "run_id": (str,), "bisect_id": (str,),
    "git_commit": (str, None), "git_commit_date": (str, None), "git_subject": (str, None),
    "git_dirty": (bool, None), "mode": (str, None), "shape_label": (str, None), "variant": (str, None),
    "inputs": (str, None), "causal": (bool, None), "bugs": (list, None), "device": (str, None),
}


def validate(d) -> str | None:
    """Why a parsed line is not a usable record (a field of the wrong type), or None."""
    if not isinstance(d, dict):
        return f"a JSON {type(d).__name__}, not an object"
    for k, types in FIELD_TYPES.items():
        if k not in d:
            continue
        v = d[k]
        # bool is an int subclass and int is not str: check the exact types, not isinstance
        if not any((v is None) if t is None else type(v) is t for t in types):
            want = " or ".join("null" if t is None else t.__name__ for t in types)
            return f"field {k} is {json.dumps(v)[:30]}, not {want}"
    if any(type(b) is not str for b in d.get("bugs") or ()):
        return "field bugs holds a non-string"
    return None


def read(paths=None) -> ReadResult:
    """Every record of the given files (default: all results/runs-*.jsonl), oldest first."""
    if paths is None:
        paths = sorted(results_dir().glob("runs-*.jsonl"))
    out = ReadResult()
    for p in map(Path, paths):
        if not p.exists():
            continue
        try:
            with open(p, "rb") as f:
                for n, raw in enumerate(f, 1):
                    if not raw.strip():
                        continue
                    try:
                        d = json.loads(raw)
                        # type(): true == 1 and 1.0 == 1 in Python, neither is schema 1
                        if not isinstance(d, dict) or type(d.get("schema")) is not int or d["schema"] != SCHEMA_VERSION:
                            raise ValueError(f"schema {d.get('schema') if isinstance(d, dict) else '?'} is not {SCHEMA_VERSION}")
                    except (ValueError, UnicodeDecodeError) as e:
                        out.damaged.append(f"{p.name}:{n}: {type(e).__name__}: {str(e)[:80]}")
                        continue
                    why = validate(d)
                    if why:
                        out.damaged.append(f"{p.name}:{n}: {why}")
                        continue
                    out.records.append(Record(d, p.name, n))
        except OSError as e:    # a directory named runs-x.jsonl, no permission, an I/O error: skip the file
            out.damaged.append(f"{p.name}: {type(e).__name__}: {e.strerror or e}")
    out.records.sort(key=lambda r: r.get("time", ""))
    return out
