"""Shows the progress of the extension's build and keeps its whole log.

``pip install -v ... 2>&1 | python tools/build_progress.py [LOG]`` (``make dev`` does this): every line of the
build goes to LOG (default ``build/build.log``); the terminal gets one line per finished compile step, with the
time since the start (ninja's ``[k/n]`` steps). When the build fails, the Makefile prints the log's last
lines (pip's exit status reaches it through ``pipefail``). Standard library only.
"""

import os
import re
import sys
import time

STEP = re.compile(r"^\[(\d+)/(\d+)\]\s+(\S+)(.*)$")
SOURCE = re.compile(r"(\S+\.(?:cpp|cu|cc|c))\b")
OUTPUT = re.compile(r"-o\s+(\S+)")
NOTEWORTHY = ("Successfully installed", "hsu_kernels setup:", "ERROR:", "error:")


def _describe(rest: str) -> str:
    """A short name for one ninja step: the source it compiles, or the file it links."""
    m = SOURCE.search(rest)
    if m:
        src = m.group(1)
        return "compile " + (os.path.relpath(src) if os.path.isabs(src) else src)
    m = OUTPUT.search(rest)
    return "link " + os.path.basename(m.group(1)) if m else rest.strip()[:80]


def main(argv) -> int:
    log_path = argv[1] if len(argv) > 1 else os.path.join("build", "build.log")
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    t0 = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        for line in sys.stdin:
            log.write(line)
            stamp = f"[{time.monotonic() - t0:6.1f} s]"
            m = STEP.match(line.strip())
            if m:
                print(f"{stamp} done {m.group(1)}/{m.group(2)}: {_describe(m.group(3) + m.group(4))}", flush=True)
            elif line.startswith(NOTEWORTHY):
                print(f"{stamp} {line.rstrip()}", flush=True)
    print(f"[{time.monotonic() - t0:6.1f} s] build output ended; whole log: {log_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
