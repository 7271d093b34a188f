"""The harness's worker processes for isolated cases (runs.run_case / runs.run_cases).

A sweep used to start a fresh interpreter per mode (Python, CuPy and the CUDA context booted
six times for `run --debug all`). Now long-lived workers run the cases, several at once (the
float64 references of different modes are independent CPU work), and keep the isolation
that matters:
* a case whose result is a fault (after a kernel fault the CUDA context is poisoned), that
  raises, that kills its worker or that runs past its timeout is reported for that case, and
  that worker is replaced at once (its successor boots while the sweep goes on);
* workers boot while the parent validates (prestart) and tell the parent the device facts,
  so the parent never initialises CUDA itself;
* a worker started under another environment (FLASHCORE_KERNEL and the like decide what it
  compiles) or another working directory is replaced, as a fresh process per case would be;
  the few settings a command makes once it has parsed (CASE_ENV) travel with each case instead,
  so the worker cli.py starts before parsing serves the command;
Workers of different processes share the GPU by time slicing (no MPS): a kernel runs alone,
as it did when each mode had its own process.

How many at once: $FLASHCORE_JOBS, else one (measured faster on an H200: default_jobs);
a worker's BLAS runs on one thread (WORKER_BLAS_THREADS), the host references on threads of
their own.

Protocol: length-prefixed pickles, requests on a worker's stdin, replies on a private copy of
its stdout (the worker points fd 1 at stderr, so a stray print cannot corrupt a reply). Its
stderr goes to a temporary file whose last line names the cause when it dies.
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
BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# A worker's BLAS runs on one thread (unless the user set the variables): the host references
# run their blocks of heads on threads of their own (stages.each_block), and OpenBLAS's threads
# under those made them slower, not faster. Measured on the H200 (scripts/host_refs_timing.py,
# the six modes at the mission shape, sum of medians): 0.73 s on 8 threads with OpenBLAS's
# default threads, 0.66 s on one thread, 0.29 s on 8 threads with OPENBLAS_NUM_THREADS=1.
WORKER_BLAS_THREADS = 1
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
# Settings a command makes after its worker may have started (cli.py starts one before it
# parses: issue 26): --kernel NAME, --reference-device and --rows. They travel with each case
# and the worker takes them on before running it, so a change of them needs no new worker.
# Every other variable (FLASHCORE_KERNEL, CUPY_CACHE_DIR, CUDA_VISIBLE_DEVICES, ...) may
# decide what a worker did at boot: a change of those gets a fresh worker.
CASE_ENV = ("FLASHCORE_REGISTRY_KERNEL", "FLASHCORE_REFERENCE_DEVICE", "FLASHCORE_ROWS")


def case_env() -> dict:
    """The CASE_ENV settings of this process now (None: unset)."""
    return {k: os.environ.get(k) for k in CASE_ENV}


def apply_case_env(env: dict) -> None:
    """In the worker: this case's CASE_ENV settings, as the parent had them when it sent it."""
    for k, v in env.items():
        if k not in CASE_ENV:
            continue
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _env_key() -> tuple:
    return (hash(frozenset((k, v) for k, v in os.environ.items() if k not in CASE_ENV)), os.getcwd())


class Worker:
    """worker.serve() in a child process: boots, says ("ready", facts, error), then answers
    each ("case", case, case_env) with ("result", RunResult) or ("error", message)."""

    def __init__(self, blas_threads: int | None = None):
        self.key = _env_key()
        self.stderr = tempfile.TemporaryFile()
        env = dict(os.environ)
        if blas_threads:   # unless the user set them
            env.update({v: str(blas_threads) for v in BLAS_THREADS if v not in os.environ})
        # ROOT first on sys.path: the worker runs the parent's harness even where the working
        # directory holds another checkout (-m would put the working directory first).
        boot = f"import sys; sys.path.insert(0, {ROOT!r}); from harness.run.worker import serve; serve({os.getpid()})"
        self.proc = subprocess.Popen([sys.executable, "-c", boot], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, env=env)
        self.blas_threads = blas_threads
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

    def start(self, case: dict):
        """Send a case (after the boot message); finish() reads its result."""
        self.ready()
        try:
            send(self.proc.stdin, ("case", case, case_env()))
        except (BrokenPipeError, OSError):
            self._lost("")

    def finish(self, timeout: float):
        """The result of the case sent, within timeout seconds; WorkerLost otherwise."""
        kind, payload = self._recv(timeout, "")
        if kind == "error":
            self.kill()
            raise WorkerLost(payload)
        return payload

    def run(self, case: dict, timeout: float):
        self.start(case)
        return self.finish(timeout)

    def fileno(self) -> int:
        return self.proc.stdout.fileno()

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


# ------------------------------------------------------------------ this process's workers
_WORKERS: list = []


def default_jobs() -> int:
    env = os.environ.get("FLASHCORE_JOBS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise FlashCoreError(f"FLASHCORE_JOBS={env!r}: expected a whole number") from None
    # One worker by default: measured on an H200 (scripts/time_harness.py, results/logs/
    # timing-*), `run --debug all --shape mission` took 2.44 s warm with one worker and 3.09 s
    # with six booting at once (each worker pays its own CuPy import and CUDA context, and
    # the references run on the GPU, so several workers mostly queue on it).
    return 1


def _live(n: int) -> list:
    """n live workers for this environment: dead or stale ones retired, missing ones started
    (they boot in parallel)."""
    key = _env_key()
    for w in list(_WORKERS):
        if not w.alive() or w.key != key:
            _WORKERS.remove(w)
            w.kill()
    while len(_WORKERS) < n:
        _WORKERS.append(Worker(WORKER_BLAS_THREADS))
    return _WORKERS[:n]


def _replace(w: Worker) -> Worker:
    """A successor for a worker that failed, started at once (it boots while the sweep goes on).
    The old one is killed, not asked: it has nothing to finish, and a context torn down after
    a fault may take its time."""
    i = _WORKERS.index(w)
    w.kill()
    _WORKERS[i] = Worker(w.blas_threads)
    return _WORKERS[i]


def prestart(n: int = 1):
    """Start n workers now (they boot while the caller goes on); no wait."""
    _live(n)


def device_facts() -> dict:
    """The device facts as a worker found them; the worker's error (NoGPUError, exit 2) where
    it found none."""
    w = _live(1)[0]
    try:
        w.ready()
    except WorkerLost as e:
        _replace(w)
        raise FlashCoreError(f"the harness worker did not start: {e}") from None
    if w.error is not None:
        raise w.error
    return dict(w.facts)


def run(case: dict, timeout: float = CASE_TIMEOUT_S):
    """One case in a worker: its RunResult, or WorkerLost (the worker is replaced)."""
    r = run_many([case], timeout, jobs=1)[0]
    if isinstance(r, WorkerLost):
        raise r
    return r


def run_many(cases: list, timeout: float = CASE_TIMEOUT_S, jobs: int = 1, before=None) -> list:
    """Each case's RunResult, or the WorkerLost that ended it, in the order of the cases: up to
    jobs cases at once, one per worker. A failed case's worker is replaced; the others go on.
    before(i), where given, is called just before case i is sent (its deadline starts after)."""
    out: list = [None] * len(cases)
    todo = list(range(len(cases)))
    workers = _live(max(1, min(jobs, len(cases))))
    busy: dict = {}   # worker -> (case index, deadline)
    try:
        while todo or busy:
            for slot, w in enumerate(workers):
                if w not in busy and todo:
                    if before is not None:
                        before(todo[0])
                    workers[slot] = _dispatch(w, cases, todo.pop(0), timeout, busy, out)
            if busy:
                _collect(workers, busy, out, timeout)
    except BaseException:   # interrupted: the busy workers' cases are lost with them
        for w in busy:
            _WORKERS.remove(w)
            w.kill()
        raise
    return out


def _dispatch(w: Worker, cases: list, i: int, timeout: float, busy: dict, out: list) -> Worker:
    try:
        w.start(cases[i])
    except WorkerLost as e:   # it died before or while taking the case
        out[i] = e
        return _replace(w)
    busy[w] = (i, time.monotonic() + timeout)
    return w


def _collect(workers: list, busy: dict, out: list, timeout: float):
    """Wait for the first reply or deadline; then take every reply there is and fail every
    case past its deadline (a hang: its worker is killed)."""
    first_deadline = min(d for _, d in busy.values())
    readable = select.select(list(busy), [], [], max(0.0, first_deadline - time.monotonic()))[0]
    now = time.monotonic()
    for w in list(busy):
        i, deadline = busy[w]
        if w not in readable and now < deadline:
            continue
        del busy[w]
        try:
            if w not in readable:
                raise WorkerLost(f"timed out after {timeout:g} s (hang?)")
            out[i] = w.finish(max(0.0, deadline - now))
        except WorkerLost as e:
            out[i] = e
            workers[workers.index(w)] = _replace(w)
            continue
        if getattr(out[i], "status", "ok") in ("fault", "hang"):   # the CUDA context is poisoned or busy
            workers[workers.index(w)] = _replace(w)


def retire(graceful: bool = True):
    """Stop every worker (the next case starts fresh ones)."""
    while _WORKERS:
        w = _WORKERS.pop()
        w.close() if graceful else w.kill()


# At exit the workers have nothing left to finish (they may still be booting): kill, no wait.
atexit.register(retire, graceful=False)
