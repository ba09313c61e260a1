"""``python -m loyaltymetrics``: the command line.

Out of memory or threads, even while the libraries are being loaded, is one
line on stderr and exit status 1, never a traceback or a crash (SPEC §2;
see ``limits``).
"""
import sys

from . import limits

limited = limits.address_space_limited()
try:
    from .cli import main

    if limited:
        import pyarrow

        pyarrow.set_cpu_count(1)        # one thread each: threads that cannot start are errors
        pyarrow.set_io_thread_count(1)
    code = main()
except Exception as error:  # MemoryError, RuntimeError("can't start new thread"), ...
    message = limits.out_of_resources(error)
    if message is None:
        raise
    limits.fail(message)
if limited and code:
    sys.stdout.flush()
    sys.stderr.flush()
    import os

    os._exit(code)   # see limits.fail
sys.exit(code)
