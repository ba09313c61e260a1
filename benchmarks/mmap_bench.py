"""``compute(path)`` over an Arrow file in the page cache against ``compute(table)`` on the same rows in memory.

For each ``--file``, each build (``--build name=src``) and each case, a
fresh process warms up once and times ``--repeat`` calls of
``lm.compute(x, by=["merchant"], period="year", threads=t)``, reporting
the median wall seconds, CPU seconds and minor page faults a call; builds
are interleaved (old, new, old, new, ...) ``--runs`` times and the table
shows the medians. Cases: ``path-1t`` / ``path-2t`` (the file's path:
memory-mapped, its pages mapped and let go each call) and ``table-1t`` /
``table-2t`` (its rows read into memory once, as a pyarrow Table);
``cold-path-1t`` / ``-2t``: one call on the file just dropped from the page
cache (read from disk through the mapping); ``after-cold-path-1t`` / ``-2t``:
the calls after such a first one, over what it left in the page cache.
The cold cases drop the file from the page cache: use a copy of your own.

How a file got into the page cache decides what mapping it costs: a file
read from disk sits in large folios (readahead allocates up to 2 MiB
folios on ext4 since Linux 6.x), so a call maps it a huge page at a time;
a file written a few KiB per ``write`` sits in 4 KiB pages, each mapped
and unmapped on its own. ``--folios`` prints the folio sizes of each file
(needs root: ``/proc/kpageflags``).

    python benchmarks/mmap_bench.py --file /tmp/orders.arrow --build old=/work/main/src --build new=src
"""
import argparse
import collections
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import time

CASES = ("path-1t", "path-2t", "table-1t", "table-2t")   # also: cold-path-1t, after-cold-path-1t (and -2t)


def evict(path):
    """Drop the file's pages from the page cache (it is clean: nothing is lost, the next read is from disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def worker(path, case, repeat):
    import loyaltymetrics as lm
    import pyarrow as pa

    threads = int(case.split("-")[-1][:-1])
    if case.startswith("table-"):
        with pa.OSFile(path) as source:     # a copy in memory, not a mapping of the file
            data = pa.ipc.open_file(source).read_all()
    else:
        data = path

    def once():
        return lm.compute(data, by=["merchant"], period="year", threads=threads).num_rows

    if case.startswith(("cold-", "after-cold-")):
        with pa.OSFile(path) as source:   # imports and code paths warmed on a few rows, the file left cold
            lm.compute(pa.ipc.open_file(source).get_batch(0).slice(0, 1000), by=["merchant"], period="year")
        evict(path)
        if case.startswith("cold-"):
            repeat = 1
        else:
            once()
    else:
        once()
    walls, cpus, faults = [], [], []
    for _ in range(repeat):
        f0, c0, w0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time(), time.perf_counter()
        once()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    print(json.dumps({"wall": statistics.median(walls), "cpu": statistics.median(cpus),
                      "faults": statistics.median(faults)}))


def folio_sizes(path):
    """Counter of page-cache folio sizes (in 4 KiB pages) of ``path``, mapped and populated here."""
    import ctypes
    import mmap

    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = (ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int)
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    os.close(fd)
    import pyarrow as pa

    buffer = pa.py_buffer(mapping)
    madvise(buffer.address, size, 22)   # MADV_POPULATE_READ
    pages = size // 4096
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(buffer.address // 4096 * 8)
        pfns = [v & ((1 << 55) - 1) for v in struct.unpack(f"{pages}Q", f.read(pages * 8))]
    sizes, current = collections.Counter(), None
    with open("/proc/kpageflags", "rb") as f:
        for pfn in pfns:
            f.seek(pfn * 8)
            flags = struct.unpack("Q", f.read(8))[0]
            if flags & (1 << 15):        # KPF_COMPOUND_HEAD
                if current:
                    sizes[current] += 1
                current = 1
            elif flags & (1 << 16):      # KPF_COMPOUND_TAIL
                current = (current or 0) + 1
            else:
                if current:
                    sizes[current] += 1
                current = None
                sizes[1] += 1
    if current:
        sizes[current] += 1
    del buffer
    mapping.close()
    return sizes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", action="append", required=True)
    parser.add_argument("--build", action="append", required=True, help="name=path of a src folder")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--folios", action="store_true")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        path, case, repeat = args.worker
        worker(path, case, int(repeat))
        return
    builds = [b.split("=", 1) for b in args.build]
    cases = args.cases.split(",")
    for path in args.file:
        if args.folios:
            sizes = folio_sizes(path)
            pages = sum(k * v for k, v in sizes.items())
            print(f"{path}: {sum(sizes.values())} folios; share of pages in folios of >= 512 pages: "
                  f"{sum(k * v for k, v in sizes.items() if k >= 512) / pages:.0%}, of 1 page: {sizes[1] / pages:.0%}")
        results = collections.defaultdict(list)
        for _ in range(args.runs):
            for case in cases:
                for name, src in builds:
                    env = dict(os.environ, PYTHONPATH=str(src))
                    out = subprocess.run([sys.executable, __file__, "--file", path, "--build", "x=x",
                                          "--worker", path, case, str(args.repeat)],
                                         env=env, capture_output=True, text=True, check=True)
                    results[case, name].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{path}  (load average {os.getloadavg()[0]:.2f})")
        print(f"{'case':10} {'build':8} {'wall s':>8} {'cpu s':>8} {'faults':>8}")
        for case in cases:
            for name, _ in builds:
                rows = results[case, name]
                print(f"{case:10} {name:8} {statistics.median(r['wall'] for r in rows):8.3f} "
                      f"{statistics.median(r['cpu'] for r in rows):8.3f} "
                      f"{statistics.median(r['faults'] for r in rows):8.0f}")


if __name__ == "__main__":
    main()
