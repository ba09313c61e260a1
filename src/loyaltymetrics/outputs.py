"""Writing output files safely (SPEC §2: input files are never modified).

Every output — tables, HTML, id mappings, rejects, generated data — goes
through :func:`atomic_output`: it is written to a private temporary file in
its destination directory (as ``mkstemp``: a random name, ``O_EXCL``, mode
0600, no symlink followed) and renamed into place only when complete, as git's
``lockfile.c`` does. A failure (disk full, a signal, bad input found
midway) leaves an earlier file at that path as it was and no partial file
behind. An output path that is one of the inputs — the same file, also
through a symlink or a hard link, or a file inside an input directory — is
refused with :class:`OutputPathError` before anything is written.
"""
import contextlib
import errno
import os
import secrets
import signal
from pathlib import Path

from .errors import OutputPathError


def _identity(path):
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _input_paths(inputs):
    """The file-system paths among ``inputs`` (tables, readers and frames are skipped)."""
    for item in inputs:
        if isinstance(item, (str, os.PathLike)):
            yield Path(item)
        elif isinstance(item, (list, tuple)):
            yield from _input_paths(item)


def check_not_input(output, inputs, what="output"):
    """Raise :class:`OutputPathError` if ``output`` is, or is inside, one of ``inputs``."""
    output = Path(output)
    out_id = _identity(output)
    out_real = Path(os.path.realpath(output))
    for source in _input_paths(inputs):
        real = Path(os.path.realpath(source))
        same = out_real == real or (out_id is not None and out_id == _identity(source))
        inside = real.is_dir() and real in out_real.parents
        if same or inside:
            how = "is" if same else "is inside"
            raise OutputPathError(output, f"the {what} {how} the input {str(source)!r}: "
                                  "refusing to overwrite an input; choose another path")


def check_output_path(path, inputs=(), what="output"):
    """The checks :func:`atomic_output` makes, for a command to run before any work.

    Raises :class:`OutputPathError` if ``path`` is one of ``inputs`` (see
    :func:`check_not_input`) or a directory.
    """
    path = Path(path)
    check_not_input(path, inputs, what)
    if path.is_dir():
        raise OutputPathError(path, f"the {what} is a directory; give a file name")
    return path


@contextlib.contextmanager
def atomic_output(path, inputs=(), private=False, what="output"):
    """Yield a private temporary path beside ``path``; rename it onto ``path`` on success.

    ``inputs`` are the paths the command reads (checked with
    :func:`check_not_input`). ``private=True`` keeps the file's mode 0600
    (id mappings and rejects hold customer e-mails); otherwise it gets the
    mode a new file would get under the process umask.
    """
    path = check_output_path(path, inputs, what)
    # As mkstemp does (a random name, O_EXCL, 0600, no symlink followed), but with the name
    # chosen before the file exists: a signal raised just as the file is created still knows
    # what to remove (mkstemp's name is lost if the signal's exception comes before it returns).
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    # Registered before it exists: if a signal's exception leaves this generator suspended
    # (raised as ``with`` enters it, so that no ``__exit__`` runs), the command's interrupt
    # handling still removes it (remove_temporaries).
    _temporaries.add(tmp)
    try:
        fd = os.open(tmp, _CREATE, 0o600)
    except OSError as e:  # nothing was created; name the output, not the temporary file
        _temporaries.discard(tmp)
        raise OSError(e.errno, f"cannot write {str(path)!r}: {e.strerror}") from None
    except BaseException:  # SIGINT/SIGTERM as the file was created
        tmp.unlink(missing_ok=True)
        raise
    try:
        os.close(fd)
        yield tmp
        if not private:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        check_stop()  # never complete an output after SIGINT/SIGTERM
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in _NO_SPACE and not isinstance(e, NoSpaceError):  # reading never fails so: a write did
            raise NoSpaceError(e.errno, f"cannot write {str(path)!r}: {os.strerror(e.errno)} (disk full or file size "
                                   f"limit); nothing was written there and an earlier file is unchanged") from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _temporaries.discard(tmp)


_temporaries = set()  # temporary files of the atomic_output blocks in progress


def remove_temporaries():
    """Remove every temporary file of an ``atomic_output`` still in progress (on SIGINT/SIGTERM)."""
    for tmp in list(_temporaries):
        tmp.unlink(missing_ok=True)
        _temporaries.discard(tmp)


_NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class NoSpaceError(OSError):
    """An output could not be written for want of space (disk full, quota, file size limit)."""


# --- stopping on SIGINT/SIGTERM --------------------------------------------------
# The command line's handlers (cli.main) raise KeyboardInterrupt or Terminated in the
# main thread, so that ``finally`` blocks and ``atomic_output`` remove what is half
# done. CPython can lose an exception raised by a signal handler (one raised while C
# code runs Python code that swallows errors), so the request is also kept here and
# checked again before an output is renamed into place and between rounds of work.

class Terminated(BaseException):
    """SIGTERM arrived (SIGINT raises KeyboardInterrupt)."""


_stop_signal = None


def request_stop(signum):
    """Record that ``signum`` asked the process to stop; return the exception to raise."""
    global _stop_signal
    _stop_signal = signum
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def stop_requested():
    """The signal number of a stop requested (and not reset), or None."""
    return _stop_signal


def reset_stop():
    global _stop_signal
    _stop_signal = None


def check_stop():
    """Raise KeyboardInterrupt or Terminated if a stop was requested (even if its exception was lost)."""
    if _stop_signal is not None:
        raise request_stop(_stop_signal)
