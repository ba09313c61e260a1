"""Writing output files safely (SPEC §2: input files are never modified).

Every output — tables, HTML, id mappings, rejects, generated data — goes
through :func:`atomic_output`: it is written to a private temporary file in
its destination directory (``mkstemp``: ``O_EXCL``, mode 0600, no symlink
followed) and renamed into place only when complete, as git's
``lockfile.c`` does. A failure (disk full, a signal, bad input found
midway) leaves an earlier file at that path as it was and no partial file
behind. An output path that is one of the inputs — the same file, also
through a symlink or a hard link, or a file inside an input directory — is
refused with :class:`OutputPathError` before anything is written.
"""
import contextlib
import os
import tempfile
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
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if not private:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

