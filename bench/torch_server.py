"""What the PyTorch bench servers share (bench/torch_diffusion.py,
bench/ldm_churches_torch.py): the command line (THREADS, --wait-policy, --help),
thread setup, the reference modules on sys.path, process memory, timing, and
the line-based JSON server loop their node sides talk to.

Use:
    import torch_server
    args = torch_server.start(__doc__)   # before torch is imported: OMP_WAIT_POLICY
    torch = torch_server.load_torch(args)
    ...
    torch_server.serve({"setup": ..., "run": ...})

Every server also answers
  {"reset_peak": true} -> {"ok"}                          VmHWM := VmRSS (/proc/self/clear_refs)
  {"memory": true}     -> {"peak_rss_bytes", "rss_bytes"}  VmHWM, VmRSS
Peak memory is the process's resident high-water mark; PyTorch 1.13's CPU
allocator keeps no statistics, and tracemalloc does not see tensor storage.
"""
import argparse
import json
import os
import resource
import sys
import time

REFERENCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "reference")
WAIT_POLICIES = ("inherit", "passive", "active")


def _threads(s):
    n = int(s)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return n


def start(doc, argv=None):
    """Parses [THREADS] [--wait-policy P] (argparse: --help prints `doc`, a bad
    value exits 2 with a message), sets OMP_WAIT_POLICY, which OpenMP reads
    once when torch loads, and puts test/reference on sys.path."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("threads", nargs="?", type=_threads, default=os.cpu_count() or 1,
                   help="torch.set_num_threads (default: os.cpu_count())")
    p.add_argument("--wait-policy", choices=WAIT_POLICIES, default="inherit",
                   help="OMP_WAIT_POLICY: passive or active, or inherit the environment's (default; the node side sets it)")
    args = p.parse_args(argv)
    if args.wait_policy != "inherit":
        if "torch" in sys.modules:
            raise RuntimeError("torch_server.start must run before torch is imported (OMP_WAIT_POLICY is read once)")
        os.environ["OMP_WAIT_POLICY"] = args.wait_policy.upper()
    if REFERENCE_DIR not in sys.path:
        sys.path.insert(0, REFERENCE_DIR)
    return args


def load_torch(args):
    """Imports torch (after start) with args.threads threads."""
    import torch
    torch.set_num_threads(args.threads)
    return torch


def info(torch):
    """What a report says of the PyTorch side."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"), "rss_bytes": rss_bytes()}


def _status_bytes(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return -1


def rss_bytes():
    return _status_bytes("VmRSS")


def peak_rss_bytes():
    return _status_bytes("VmHWM")


def reset_peak():
    # Writing 5 resets the kernel's RSS high-water mark (Linux >= 4.0).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_seconds():
    # user + system time of every thread of this process
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn, *a, **kw):
    """(fn's result, wall ms, process CPU ms)."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    out = fn(*a, **kw)
    return out, (time.perf_counter() - t0) * 1e3, (cpu_seconds() - c0) * 1e3


def memory():
    return {"peak_rss_bytes": peak_rss_bytes(), "rss_bytes": rss_bytes()}


def serve(handlers, stdin=None, stdout=None):
    """One JSON request per line, one JSON response per line: the first key of
    `handlers` (in its order, then reset_peak and memory) that the request has
    is called with the request; an exception becomes {"error": ...}, which the
    node side turns into a failed bench."""
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    table = dict(handlers)
    table.setdefault("reset_peak", lambda req: {"ok": reset_peak()})
    table.setdefault("memory", lambda req: memory())
    for line in stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            key = next((k for k in table if k in req), None) if isinstance(req, dict) else None
            resp = table[key](req) if key is not None else {"error": f"unknown request {line.strip()}"}
        except Exception as e:  # reported to the node side, which fails the bench
            resp = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(resp), file=stdout, flush=True)
