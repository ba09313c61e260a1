"""Scanning an Arrow file by reading it (pread into reused buffers) against mapping it, one thread.

Issue 16 asked whether copying the rows out of the page cache, a piece at a
time into buffers that stay in the CPU cache, beats mapping the file's
pages (MADV_POPULATE_READ, the kernel, MADV_DONTNEED) when the file sits in
the page cache in 4 KiB pages. ``map``: what ``compute(path)`` does per
segment today; ``pread``: each record batch's columns ``--piece-rows`` rows
at a time ``os.preadv`` -ed into per-column buffers reused for every piece,
then the same kernel call. Both run the compute kernel (``period="year"``)
alone, no finalize; CPU seconds, median of ``--repeat`` in one process.

    python benchmarks/pread_vs_map.py FILE.arrow [FILE.arrow ...]
"""
import argparse
import os
import statistics
import time

import numpy as np
import pyarrow as pa


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--piece-rows", type=int, default=1 << 16)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from loyaltymetrics import inputs
    from loyaltymetrics.scan import ComputeKernel

    def scan_mapped(path):
        kernel = ComputeKernel()
        state = kernel.new_state()
        for batch in inputs.order_batches(path):
            batch.populate()
            kernel.scan(state, batch, 0, len(batch))
            batch.release()
        return state.finish()[2].sum(axis=0)

    def scan_read(path):
        kernel = ComputeKernel()
        state = kernel.new_state()
        names = ("merchant_id", "customer_id", "order_ts", "amount")
        buffers = None
        fd = os.open(path, os.O_RDONLY)
        try:
            for batch in inputs.order_batches(path):   # the mapped views: only their offsets are used
                base = batch.mapped.buffer.address
                columns = [getattr(batch, name) for name in names]
                if buffers is None:
                    buffers = [np.empty(args.piece_rows, c.dtype) for c in columns] + \
                              [np.empty(args.piece_rows // 8 + 1, np.uint8)]
                for lo in range(0, len(batch), args.piece_rows):
                    hi = min(len(batch), lo + args.piece_rows)
                    parts = []
                    for column, buffer in zip(columns, buffers):
                        part = buffer[:hi - lo]
                        offset = column.__array_interface__["data"][0] - base + lo * column.itemsize
                        os.preadv(fd, [part], offset)
                        parts.append(part)
                    bit_lo, bit_hi = (batch.reward_offset + lo) // 8, (batch.reward_offset + hi + 7) // 8
                    bits = buffers[4][:bit_hi - bit_lo]
                    os.preadv(fd, [bits], batch.reward_bits.__array_interface__["data"][0] - base + bit_lo)
                    piece = inputs.OrderBatch(batch.source, batch.first_row + lo, *parts, bits,
                                              (batch.reward_offset + lo) % 8, batch.units_per_day)
                    kernel.scan(state, piece, 0, hi - lo)
        finally:
            os.close(fd)
        return state.finish()[2].sum(axis=0)

    for path in args.files:
        expected = scan_mapped(path)
        assert (scan_read(path) == expected).all()
        times = {"map": [], "pread": []}
        for _ in range(args.repeat):
            for name, scan in (("map", scan_mapped), ("pread", scan_read)):
                start = time.process_time()
                scan(path)
                times[name].append(time.process_time() - start)
        print(f"{path} (load {os.getloadavg()[0]:.2f}): " + ", ".join(
            f"{name} {statistics.median(t):.3f} CPU s" for name, t in times.items()))


if __name__ == "__main__":
    main()
