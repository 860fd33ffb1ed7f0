"""Runs a program under resource limits, as `python -m oslo_concurrency.prlimit` does for nova:
each limit set as both soft and hard, then the program exec'ed in this process.

    python3 prlimit.py --as=BYTES --cpu=SECONDS -- PROGRAM [ARG...]

A script of its own, not a preexec_fn: the worker has threads (libvirt's event loop), and a
fork there must not run Python before the exec.
"""

import argparse
import os
import resource
import shutil
import sys

LIMITS = (("as", resource.RLIMIT_AS), ("cpu", resource.RLIMIT_CPU))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="prlimit", description=__doc__)
    parser.add_argument("--as", type=int, help="address space limit in bytes")
    parser.add_argument("--cpu", type=int, help="CPU time limit in seconds")
    parser.add_argument("program")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    for name, limit in LIMITS:
        value = getattr(args, name)
        if value is not None:
            resource.setrlimit(limit, (value, value))
    program = args.program
    if not os.path.isabs(program):
        program = shutil.which(program) or program
    os.execv(program, [program] + args.args)


if __name__ == "__main__":
    sys.exit(main())
