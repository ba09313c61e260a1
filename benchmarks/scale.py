"""``loyaltymetrics compute`` at growing sizes: rows/s and peak RSS, which should stay flat.

    python benchmarks/scale.py --rows 1e9 --data-dir /data/bench            # 1e7, 1e8, 1e9
    python benchmarks/scale.py --sizes 1e7,5e7 --data-dir /data/bench

For each size it writes the orders (sorted, int32 keys, timestamp[us, UTC],
int64 amount, bool reward) to an uncompressed Arrow IPC file a block at a
time, in a child process whose peak RSS is shown too (bounded, whatever the
size), or reuses the file an earlier run wrote with the same parameters.
Then it runs the command line

    python -m loyaltymetrics compute FILE --by merchant --period year -o OUT.parquet

as a child process (also on a 20,000-row file, whose time and RSS are the
command's fixed cost) and reports its wall time (process start to exit, so
interpreter start-up, the scan, finalize and writing the Parquet output are
all in it), rows/s and peak RSS (the child's own ``ru_maxrss``, from
``wait4``). The output's orders are summed and checked against the rows
written. A file that fits in memory is read once before timing (page cache
warm); a larger one is read from disk, and the table says which.

The merchant count is held fixed (``--merchants``, default 3,000), so the
output does not grow with the rows and any growth of RSS is the scan's.

Before writing anything it checks the free space in ``--data-dir`` and
refuses, saying how much is needed, if the files would not fit.
``--delete`` removes each file once measured (then only the largest must
fit at a time).
"""
import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from datagen import (  # noqa: E402
    data_file_name, dataset_parameters, estimated_file_bytes, file_parameters, write_orders_file,
)
from peers import machine_info, meminfo, mib, warm_page_cache  # noqa: E402

DISK_MARGIN = 2 << 30  # left free for everything else on the disk
# Also run on a file this small: its time and RSS are the command's fixed cost
# (interpreter start-up, imports, finalize, writing Parquet), to set the others against.
STARTUP_ROWS = 20_000


def default_sizes(largest):
    """Powers of ten from 1e7 up to ``largest``, and ``largest`` itself."""
    sizes, n = [], 10**7
    while n < largest:
        sizes.append(n)
        n *= 10
    return sizes + [largest]


def parse_sizes(text):
    return [int(float(x)) for x in text.split(",") if x.strip()]


def data_path(data_dir, rows, seed, merchants):
    return Path(data_dir) / data_file_name(rows, seed, merchants)


def parse_merchants(text):
    return None if text == "auto" else int(float(text))


def needed_bytes(paths_rows, seed, merchants, delete):
    """Disk the files still to be written need: all of them, or (with --delete) the largest at a time."""
    missing = [estimated_file_bytes(rows) for path, rows in paths_rows
               if file_parameters(path) != dataset_parameters(rows, seed, n_merchants=merchants)]
    if not missing:
        return 0
    return max(missing) if delete else sum(missing)


# Runs a command and reports its wall time and peak RSS. A process's ru_maxrss
# starts from the RSS of the process it was forked from (Linux carries it
# across exec), so the command is started from this small launcher, not from
# the benchmark, whose own RSS would otherwise show up as the command's.
LAUNCHER = """
import json, os, subprocess, sys, time
cmd, report = json.loads(sys.argv[1]), sys.argv[2]
start = time.perf_counter()
proc = subprocess.Popen(cmd)
_, status, usage = os.wait4(proc.pid, 0)
seconds = time.perf_counter() - start
proc.returncode = code = os.waitstatus_to_exitcode(status)
with open(report, "w") as f:
    json.dump({"code": code, "seconds": seconds, "peak_rss": usage.ru_maxrss * 1024}, f)  # KiB on Linux
"""


def run_measured(cmd, timeout=None):
    """Run ``cmd``; return ((exit code, wall seconds, peak RSS bytes) or None past ``timeout``, stdout, stderr)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        proc = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, json.dumps(cmd), report],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the command
            out, err = proc.communicate()
            return None, out, err
        if proc.returncode != 0:
            return (proc.returncode, None, None), out, err
        with open(report) as f:
            r = json.load(f)
    return (r["code"], r["seconds"], r["peak_rss"]), out, err


def generate(path, rows, seed, merchants):
    """Write the file in a child process; return (seconds, peak RSS bytes, reused)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-generate", str(path),
           "--rows", str(rows), "--seed", str(seed), "--merchants", str(merchants or "auto")]
    result, out, err = run_measured(cmd)
    code, seconds, peak = result
    if code != 0:
        raise SystemExit(f"writing {path} failed:\n{err}")
    return seconds, peak, json.loads(out.strip().splitlines()[-1])["reused"]


def generate_child(path, rows, seed, merchants):
    step = max(rows // 10, 1)
    next_report = [step]

    def log(done):
        if done >= next_report[0]:
            print(f"    wrote {done:,} rows", file=sys.stderr, flush=True)
            next_report[0] += step

    _, reused = write_orders_file(path, rows, seed, log=log, n_merchants=merchants)
    print(json.dumps({"reused": reused}))


def compute_options(args):
    """--threads / --engine are passed on only if this version's command line has them."""
    help_text = subprocess.run([sys.executable, "-m", "loyaltymetrics", "compute", "--help"],
                               capture_output=True, text=True).stdout
    options = []
    for flag, value in (("--threads", args.threads), ("--engine", args.engine)):
        if value is None:
            continue
        if flag not in help_text:
            print(f"note: this loyaltymetrics has no {flag}; running without it")
            continue
        options += [flag, str(value)]
    return options


def orders_total(parquet_path):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    return pc.sum(pq.read_table(parquet_path, columns=["orders"]).column("orders")).as_py()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=float, default=1e9,
                        help="the largest size; also runs every power of ten from 1e7 below it (default: 1e9)")
    parser.add_argument("--sizes", type=parse_sizes, help="comma-separated sizes to run instead, e.g. 1e7,5e7")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "loyaltymetrics-bench"),
                        help="where data files are written and reused (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merchants", type=parse_merchants, default=3000,
                        help="merchants in every data set, held fixed so that only the rows grow and the "
                             "output (one row per merchant and year) does not; 'auto' grows them with the "
                             "rows, about 2,000 store-customers a merchant (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1, help="compute runs per size (default: 1)")
    parser.add_argument("--threads", type=int, help="passed to loyaltymetrics compute --threads, where it exists")
    parser.add_argument("--engine", help="passed to loyaltymetrics compute --engine, where it exists")
    parser.add_argument("--time-limit", type=float, help="seconds a compute run may take before it is stopped")
    parser.add_argument("--delete", action="store_true", help="delete each data file once it has been measured")
    parser.add_argument("--child-generate", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_generate:
        return generate_child(args.child_generate, int(args.rows), args.seed, args.merchants)

    sizes = sorted(set(args.sizes or default_sizes(int(args.rows))) | {STARTUP_ROWS})
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    plan = [(data_path(data_dir, rows, args.seed, args.merchants), rows) for rows in sizes]
    stat = os.statvfs(data_dir)
    free = stat.f_bavail * stat.f_frsize
    need = needed_bytes(plan, args.seed, args.merchants, args.delete)
    if need + DISK_MARGIN > free:
        raise SystemExit(
            f"not enough disk: the data files for {', '.join(f'{r:,}' for r in sizes)} rows need about "
            f"{need / 2**30:,.1f} GiB more (plus {DISK_MARGIN / 2**30:g} GiB kept free), and {data_dir} has "
            f"{free / 2**30:,.1f} GiB free. Use smaller --rows/--sizes, another --data-dir, or --delete.")

    print("$ " + shlex.join([sys.executable] + sys.argv))
    for key, value in machine_info().items():
        print(f"{key + ':':<10}{value}")
    options = compute_options(args)
    rows_out = []
    for path, rows in plan:
        print(f"{rows:,} rows: writing {path.name}", flush=True)
        gen_seconds, gen_peak, reused = generate(path, rows, args.seed, args.merchants)
        warm = warm_page_cache(path)
        size = path.stat().st_size
        runs = []
        with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
            out_path = os.path.join(tmp, "metrics.parquet")
            cmd = [sys.executable, "-m", "loyaltymetrics", "compute", str(path),
                   "--by", "merchant", "--period", "year", "-o", out_path] + options
            print("  $ " + shlex.join(cmd), flush=True)
            for _ in range(args.repeat):
                result, _, err = run_measured(cmd, args.time_limit)
                if result is None:
                    runs.append(None)
                    print(f"  did not finish in {args.time_limit:g} s", flush=True)
                    break
                code, seconds, peak = result
                if code != 0:
                    raise SystemExit(f"loyaltymetrics compute failed on {path}:\n{err}")
                total = orders_total(out_path)
                if total != rows:
                    raise SystemExit(f"loyaltymetrics counted {total:,} orders in {path}, which has {rows:,}")
                runs.append((seconds, peak))
                print(f"  {seconds:,.2f} s, {rows / seconds / 1e6:,.1f} M rows/s, peak RSS {mib(peak)}", flush=True)
        rows_out.append((rows, size, reused, gen_seconds, gen_peak, warm, runs))
        if args.delete:
            path.unlink()

    print()
    merchants = "merchants growing with the rows" if args.merchants is None else f"{args.merchants:,} merchants"
    print(f"loyaltymetrics compute --by merchant --period year{' ' + ' '.join(options) if options else ''}, "
          f"whole command (start-up to Parquet written), {merchants}; median of {args.repeat} run(s):")
    header = ["rows", "file", "write", "write peak RSS", "compute", "rows/s", "compute peak RSS", "page cache"]
    lines = []
    for rows, size, reused, gen_seconds, gen_peak, warm, runs in rows_out:
        done = [r for r in runs if r is not None]
        write = "reused" if reused else f"{gen_seconds:,.1f} s"
        if done and len(done) == len(runs):
            seconds = statistics.median(s for s, _ in done)
            peak = statistics.median(p for _, p in done)
            cells = [f"{seconds:,.2f} s", f"{rows / seconds / 1e6:,.1f} M", mib(peak)]
        else:
            cells = [f"did not finish in {args.time_limit:g} s", "-", "-"]
        lines.append([f"{rows:,}", mib(size), write, "-" if reused else mib(gen_peak)] + cells
                     + ["warm" if warm else "cold (larger than memory)"])
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(header)]
    for cells in [header, ["-" * w for w in widths]] + lines:
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    available = meminfo().get("MemAvailable")
    if available:
        print(f"(memory available now: {mib(available)})")


if __name__ == "__main__":
    sys.exit(main())
