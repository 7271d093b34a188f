"""One long-lived worker process for the harness's isolated cases (runs.run_case(isolate=True)).

A sweep used to start a fresh interpreter per mode (Python, CuPy and the CUDA context booted six
times for `run --debug all`). Now one worker runs the cases one after the other and keeps the
isolation that matters:
* a case whose result is a fault (after a kernel fault the CUDA context is poisoned), that
  raises, that kills the worker or that runs past its timeout is reported for that case, and
  the worker is replaced before the next case;
* the worker boots while the parent validates (prestart) and tells the parent the device facts,
  so the parent never initialises CUDA itself;
* a worker started under another environment (FLASHCORE_KERNEL and the like decide what it
  compiles) or another working directory is replaced, as a fresh process per case would be.

Protocol: length-prefixed pickles, requests on the worker's stdin, replies on a private copy
of its stdout (the worker points fd 1 at stderr, so a stray print cannot corrupt a reply).
Its stderr goes to a temporary file whose last line names the cause when it dies.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.errors import FlashCoreError

BOOT_TIMEOUT_S = 120      # Python, CuPy and a CUDA context: seconds, unless something is wrong
CASE_TIMEOUT_S = 300      # one (mode, shape): a hang if longer
EXIT_WAIT_S = 5
ROOT = str(Path(__file__).resolve().parents[2])   # the checkout whose harness the worker must run
_HEADER = struct.Struct("<Q")


class WorkerLost(Exception):
    """The worker died, hung or raised; the message says which (one line)."""


# ------------------------------------------------------------------ framing
def send(f, obj):
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(_HEADER.pack(len(data)) + data)
    f.flush()


def recv_blocking(f):
    """The next message from a file (the worker's side); None at end of file."""
    head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    (n,) = _HEADER.unpack(head)
    data = f.read(n)
    if len(data) < n:
        return None
    return pickle.loads(data)


def _read_exact(fd: int, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError
        chunk = os.read(fd, min(n - len(buf), 1 << 22))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def recv(fd: int, deadline: float):
    """The next message from a pipe (the parent's side), by a deadline (TimeoutError), or
    EOFError where the writer is gone."""
    (n,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    return pickle.loads(_read_exact(fd, n, deadline))


# ------------------------------------------------------------------ one worker
def _env_key() -> tuple:
    return (hash(frozenset(os.environ.items())), os.getcwd())


class Worker:
    """worker.serve() in a child process: boots, says ("ready", facts, error), then answers
    each ("case", case) with ("result", RunResult) or ("error", message)."""

    def __init__(self):
        self.key = _env_key()
        self.stderr = tempfile.TemporaryFile()
        # ROOT first on sys.path: the worker runs the parent's harness even where the working
        # directory holds another checkout (-m would put the working directory first).
        boot = f"import sys; sys.path.insert(0, {ROOT!r}); from harness.run.worker import serve; serve({os.getpid()})"
        self.proc = subprocess.Popen([sys.executable, "-c", boot], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr)
        self.booted = False
        self.facts: dict | None = None
        self.error: Exception | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self, timeout: float = BOOT_TIMEOUT_S):
        """Wait for the boot message (device facts, or the error the worker met getting them)."""
        if not self.booted:
            _, self.facts, self.error = self._recv(timeout, "while starting")
            self.booted = True

    def run(self, case: dict, timeout: float):
        self.ready()
        try:
            send(self.proc.stdin, ("case", case))
        except (BrokenPipeError, OSError):
            self._lost("")
        kind, payload = self._recv(timeout, "")
        if kind == "error":
            self.kill()
            raise WorkerLost(payload)
        return payload

    def _recv(self, timeout: float, what: str):
        try:
            return recv(self.proc.stdout.fileno(), time.monotonic() + timeout)
        except TimeoutError:
            self.kill()
            raise WorkerLost(f"timed out after {timeout:g} s{' ' + what if what else ''} (hang?)") from None
        except (EOFError, pickle.UnpicklingError):
            self._lost(what)

    def _lost(self, what: str):
        try:
            rc = self.proc.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.returncode
        how = f"killed by {signal.Signals(-rc).name}" if rc is not None and rc < 0 else f"exited {rc}"
        raise WorkerLost(f"worker {how}{' ' + what if what else ''}: {self.stderr_tail()}")

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        lines = [l for l in self.stderr.read().decode(errors="replace").splitlines() if l.strip()]
        return lines[-1].strip() if lines else "(no output)"

    def kill(self):
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        self._close_files()

    def close(self):
        """Ask it to exit; kill it if it does not."""
        if self.alive():
            try:
                send(self.proc.stdin, ("exit",))
                self.proc.wait(timeout=EXIT_WAIT_S)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def _close_files(self):
        for f in (self.proc.stdin, self.proc.stdout, self.stderr):
            try:
                f.close()
            except OSError:
                pass


# ------------------------------------------------------------------ the process's worker
_WORKER: Worker | None = None


def _current() -> Worker:
    """The live worker for this environment, started if there is none."""
    global _WORKER
    if _WORKER is not None and (not _WORKER.alive() or _WORKER.key != _env_key()):
        retire()
    if _WORKER is None:
        _WORKER = Worker()
    return _WORKER


def prestart():
    """Start the worker now (it boots while the caller goes on); no wait."""
    _current()


def device_facts() -> dict:
    """The device facts as the worker found them; the worker's error (NoGPUError, exit 2) where
    it found none."""
    w = _current()
    try:
        w.ready()
    except WorkerLost as e:
        retire()
        raise FlashCoreError(f"the harness worker did not start: {e}") from None
    if w.error is not None:
        raise w.error
    return dict(w.facts)


def run(case: dict, timeout: float = CASE_TIMEOUT_S):
    """One case in the worker: its RunResult, or WorkerLost (the worker is gone, and replaced
    on the next call). A result with status fault retires the worker too (poisoned context)."""
    w = _current()
    try:
        result = w.run(case, timeout)
    except WorkerLost:
        _replace()
        raise
    except BaseException:     # the parent was interrupted: never reuse this worker
        retire(graceful=False)
        raise
    if getattr(result, "status", "ok") == "fault":
        _replace()
    return result


def _replace():
    """Retire the worker and start its successor at once: it boots while the parent records
    and prints the failed case."""
    retire()
    prestart()


def retire(graceful: bool = True):
    """Stop the current worker (the next case starts a fresh one)."""
    global _WORKER
    w, _WORKER = _WORKER, None
    if w is not None:
        w.close() if graceful else w.kill()


# At exit the worker has nothing left to finish (it may still be booting): kill it, no wait.
atexit.register(retire, graceful=False)
