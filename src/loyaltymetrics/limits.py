"""Running under an address-space limit (``ulimit -v``, RLIMIT_AS): fit, or fail in one line (SPEC §2).

Standard library only: it runs before NumPy and pyarrow are imported, so
that their start-up reservations can still be made small.

- glibc gives every thread that allocates its own malloc arena, reserving
  64 MB of address space each; OpenBLAS (loaded by NumPy, unused here)
  starts a thread per core with buffers; Arrow's allocators (mimalloc,
  jemalloc) reserve address space by the gigabyte and its thread pools
  start a thread per core. Under a limit these reservations, not the work,
  exhaust the address space: ``adapt()`` keeps them small.
- At the command line, out of memory or threads while the libraries load is
  one line on stderr and exit status 1, not a traceback or a crash in the
  interpreter's shutdown.
"""
import os
import sys

M_ARENA_MAX = -8   # mallopt parameter (glibc malloc.h)


def address_space_limited():
    """Whether this process runs under an address-space limit (RLIMIT_AS)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, AttributeError, ValueError, OSError):
        return False
    return soft != resource.RLIM_INFINITY


def command_line():
    """Whether this process is the ``loyaltymetrics`` command (``python -m loyaltymetrics`` or the script)."""
    argv0 = sys.argv[0] if sys.argv else ""
    return argv0 == "-m" and "loyaltymetrics" in " ".join(getattr(sys, "orig_argv", ())) \
        or os.path.basename(argv0) == "loyaltymetrics" \
        or argv0.endswith(os.path.join("loyaltymetrics", "__main__.py"))


def adapt():
    """Under an address-space limit, keep the libraries' reservations small (see the module doc).

    Only settings the process has not made itself, and only for libraries
    not loaded yet; without a limit nothing changes.
    """
    if not address_space_limited():
        return False
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # no BLAS is used here
    if "pyarrow" not in sys.modules:
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    if sys.platform.startswith("linux") and "MALLOC_ARENA_MAX" not in os.environ:
        try:
            import ctypes

            ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1)
        except (OSError, AttributeError):
            pass
    if command_line():
        sys.excepthook = _command_line_excepthook
        sys.unraisablehook = _command_line_unraisablehook
    return True


def adapt_loaded():
    """At each entry point: a limit set after the libraries loaded still gets their small settings.

    Arrow's default allocator (mimalloc) crashes, rather than failing, in some
    allocations that meet an address-space limit: under a limit, Arrow's
    system allocator is made the default. Without a limit nothing changes.
    """
    if not address_space_limited():
        return
    pyarrow = sys.modules.get("pyarrow")
    if pyarrow is not None and pyarrow.default_memory_pool().backend_name != "system":
        pyarrow.set_memory_pool(pyarrow.system_memory_pool())
    if sys.platform.startswith("linux") and "MALLOC_ARENA_MAX" not in os.environ:
        try:
            import ctypes

            ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1)
        except (OSError, AttributeError):
            pass


def out_of_resources(error):
    """The one-line message if ``error`` means out of memory or threads, else None."""
    try:
        from .errors import resource_error
    except Exception:   # errors.py has no imports of its own: only a failure to load Python itself
        return None

    typed = resource_error(error)
    return None if typed is None else str(typed)


def fail(message, code=1):
    """Print ``message`` as the command's one error line and exit without the interpreter's shutdown
    (native libraries half set up by a failed allocation or thread start may crash in it)."""
    print(f"loyaltymetrics: error: {message}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _command_line_unraisablehook(unraisable):
    # A thread whose start-up ran out of memory: its chunk is scanned by another thread
    # (parallel._run_jobs), so the command's output stays one line.
    if isinstance(unraisable.exc_value, MemoryError):
        return
    sys.__unraisablehook__(unraisable)


def _command_line_excepthook(kind, error, traceback):
    message = out_of_resources(error) if isinstance(error, Exception) else None
    if message is None:
        sys.__excepthook__(kind, error, traceback)
        return
    fail(message)
