"""A progress bar with rows/s on stderr, for long commands.

Shown only when it is asked for (``progress=True`` in the API; the command
line asks unless ``--quiet``) *and* the stream is a terminal, so pipelines,
log files and CI output stay clean. One function, :func:`bar`, is the hook
for every long loop::

    with progress.bar(total_rows, enabled) as bar:
        for batch in batches:
            ...
            bar.update(batch.num_rows)

The bar itself is tqdm's: well kept, cheap per update (it redraws at most a
few times a second) and it handles terminal widths and unknown totals.
"""
import sys


class _Off:
    """The bar when it is not shown: every call is a no-op."""

    def update(self, n=1):
        pass

    def set_description(self, desc):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _is_terminal(stream):
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed stream
        return False


def shown(enabled, file=None, force=False):
    """Whether :func:`bar` would draw: ``enabled`` and (``force`` or the stream is a terminal)."""
    return bool(enabled) and (force or _is_terminal(sys.stderr if file is None else file))


def bar(total=None, enabled=True, *, desc="rows", file=None, force=False):
    """A progress bar counting rows, with rows/s; a no-op unless :func:`shown`.

    Parameters
    ----------
    total : int, optional
        Rows expected; ``None`` when unknown (the bar then shows the count and rate).
    enabled : bool
        What the caller asked for (``progress=`` in the API, not ``--quiet`` on the command line).
    desc : str
        The label in front of the bar.
    file : text stream, optional
        Where to draw; ``sys.stderr`` by default.
    force : bool
        Draw even when ``file`` is not a terminal (tests, or a caller that knows better).

    Returns an object with ``update(n)`` and ``close()`` that is also a context manager.
    """
    if not shown(enabled, file, force):
        return _Off()
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=" rows", unit_scale=True, file=sys.stderr if file is None else file,
        dynamic_ncols=True, mininterval=0.2, leave=True,
    )
