"""Errors the CLI turns into one-line messages and exit codes (never a traceback)."""

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_UNDECIDED = 125   # `flashcore check` could not decide: git bisect run's "skip"


class FlashCoreError(Exception):
    """Base class: the message is one line meant for the user; exit_code says which kind."""

    exit_code = EXIT_USAGE


class UsageError(FlashCoreError):
    """Bad input: unknown mode, unsupported head dim, bad shape, unknown arch, ..."""

    exit_code = EXIT_USAGE


class NoGPUError(FlashCoreError):
    """The command needs a CUDA GPU (or a tool such as compute-sanitizer) that is not here."""

    exit_code = EXIT_USAGE


class CompileError(FlashCoreError):
    """NVRTC rejected a variant; the message carries the log with the offending source lines."""

    exit_code = EXIT_CHECK_FAILED


class Hang(FlashCoreError):
    """A launch did not finish within the harness's deadline (device.HANG_S): a verdict, like a fault."""

    exit_code = EXIT_CHECK_FAILED
