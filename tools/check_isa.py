"""Checks that the portable build's CPU kernel can run on any x86-64-v2 CPU.

``python tools/check_isa.py [--summary] [SO [MAP]]`` (default: hsu_kernels/_C*.so and the linker map setup.py
keeps beside it, hsu_kernels/_C.map). It disassembles the extension (``objdump -d``), finds each function's
widest instructions (AVX: VEX-encoded ``v...`` instructions or ymm registers; AVX-512: zmm or mask registers,
broadcasts), and looks up in the linker map which object file the function's code came from. Code from the
baseline objects must use neither (it must run on an x86-64-v2 CPU), code from the AVX2 copies
(``*_avx2.o``) no AVX-512. Header functions emitted by several objects are kept once, from the first object in
link order (setup.py links the baseline objects first, then the AVX2 copies, then the AVX-512 ones), so each
such function is checked at the lowest level of the files that use it. ``--summary`` prints, per level, how
many functions use each instruction set: the wide copies must really use wide instructions.

Exit status 0 when the rules hold, 1 with the offending functions listed otherwise, 2 when the extension is not
a portable build, the map is missing or objdump is not installed.
"""

import argparse
import bisect
import glob
import os
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict

# AVX-512: zmm registers, the upper 16 xmm/ymm registers, mask registers, embedded broadcasts, and the
# instructions that exist only with EVEX encoding
WIDE512 = re.compile(r"%zmm\d+|%[xy]mm(?:1[6-9]|2\d|3[01])\b|%k[0-7]\b|\{1to\d+\}")
EVEX_ONLY = ("vpternlog", "vpermt2", "vpermi2", "vrcp14", "vrsqrt14", "vscalef", "vfixupimm", "vgetexp",
             "vgetmant", "vrndscale", "vreduce", "vrange", "vcompress", "vexpand", "vpcompress", "vpexpand",
             "vcvtusi2", "vcvtudq2", "vcvtuqq2", "vcvtqq2", "vcvtpd2qq", "vcvtps2qq", "vcvtpd2udq",
             "vcvtps2udq", "vcvttpd2qq", "vcvttps2qq", "vpconflict", "vplzcnt", "vpabsq", "vpmaxsq", "vpminsq",
             "vpmaxuq", "vpminuq", "vpmullq", "vpsraq", "vprol", "vpror", "vblendm", "vpblendm", "vpbroadcastm",
             "vextractf32x", "vextractf64x", "vextracti32x", "vextracti64x", "vinsertf32x", "vinsertf64x",
             "vinserti32x", "vinserti64x", "vshuff", "vshufi", "valign", "vdbpsad", "vfpclass", "vptestm",
             "vptestnm")
# the mask-register instructions (kmovw, korw, kortestw, kshiftrw, ...)
MASK_OPS = ("kmov", "kand", "kor", "kxor", "kxnor", "knot", "ktest", "kshift", "kadd", "kunpck")
# VEX/EVEX mnemonics all start with "v"; these legacy ones do too
NOT_VEX = {"verr", "verw", "vmcall", "vmlaunch", "vmresume", "vmxoff", "vmxon", "vmread", "vmwrite", "vmptrld",
           "vmptrst", "vmclear", "vmfunc"}
# the AVX-512 down-converts and mask moves (AVX2's vpmovsx*, vpmovzx*, vpmovmskb are not among them)
EVEX_PMOV = re.compile(r"^vpmov(?:u?s)?(?:db|dw|qb|qd|qw|wb)[a-z]?$|^vpmov(?:m2[bwdq]|[bwdq]2m)$")
LEVELS = ["sse", "avx", "avx512"]


def level_of(mnemonic: str, operands: str) -> int:
    """0: SSE or plain x86-64; 1: AVX/AVX2 (VEX); 2: AVX-512."""
    if WIDE512.search(operands) or mnemonic.startswith(MASK_OPS):  # (vcmppd into a mask register: here too)
        return 2
    if mnemonic.startswith("v") and mnemonic not in NOT_VEX:
        return 2 if mnemonic.startswith(EVEX_ONLY) or EVEX_PMOV.match(mnemonic) else 1
    return 1 if "%ymm" in operands else 0


OBJ_LEVEL = (("_avx512.o", 2), ("_avx2.o", 1))
SECTION_LINE = re.compile(r"^ (\.text\S*)(?:\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S+))?\s*$")
PLACE_LINE = re.compile(r"^\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S+)\s*$")


def object_level(obj: str) -> int:
    for suffix, level in OBJ_LEVEL:
        if obj.endswith(suffix):
            return level
    return 0


def read_map(path: str):
    """Sorted ``[(start, end, object)]`` of every code section the linker placed from an object file."""
    spans, pending = [], None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = SECTION_LINE.match(line)
            if m:
                pending = None
                if m.group(2):
                    spans.append((int(m.group(2), 16), int(m.group(2), 16) + int(m.group(3), 16), m.group(4)))
                else:
                    pending = m.group(1)
                continue
            if pending:
                m = PLACE_LINE.match(line)
                if m:
                    spans.append((int(m.group(1), 16), int(m.group(1), 16) + int(m.group(2), 16), m.group(3)))
                pending = None
    return sorted(s for s in spans if s[1] > s[0] and s[2].endswith(".o"))


def scan(so: str):
    """``{(address, name): widest level}`` for every function in the disassembly of ``so``."""
    out = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", so], capture_output=True, text=True,
                         check=True).stdout
    func = re.compile(r"^([0-9a-f]+) <(.+)>:$")
    insn = re.compile(r"^\s*[0-9a-f]+:\s+([a-z][a-z0-9.]*)\s*(.*)$")
    widest, current = {}, None
    for line in out.splitlines():
        m = func.match(line)
        if m:
            current = (int(m.group(1), 16), m.group(2))
            widest.setdefault(current, 0)
            continue
        if current is not None:
            m = insn.match(line)
            if m:
                widest[current] = max(widest[current], level_of(m.group(1), m.group(2)))
    return widest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("so", nargs="?", help="the extension (default: hsu_kernels/_C*.so of this checkout)")
    ap.add_argument("map", nargs="?", help="its linker map (default: _C.map beside it)")
    ap.add_argument("--summary", action="store_true", help="per level, how many functions use each instruction set")
    args = ap.parse_args(argv)
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    so = args.so or next(iter(sorted(glob.glob(os.path.join(root, "hsu_kernels", "_C*.so")))), None)
    if so is None or not os.path.exists(so):
        print("no extension found (build it first: make dev)")
        return 2
    link_map = args.map or os.path.join(os.path.dirname(so), "_C.map")
    if not os.path.exists(link_map):
        print(f"no linker map at {link_map} (setup.py writes it in a build in place: make dev)")
        return 2
    if shutil.which("objdump") is None:
        print("objdump not found (binutils)")
        return 2
    spans = read_map(link_map)
    if not any(object_level(o) for _, _, o in spans):
        print(f"{so}: no AVX2 or AVX-512 objects in its map: not a portable build")
        return 2
    starts = [a for a, _, _ in spans]
    counts = defaultdict(Counter)
    bad, unplaced = [], 0
    for (addr, name), lv in scan(so).items():
        k = bisect.bisect_right(starts, addr) - 1
        if k < 0 or addr >= spans[k][1]:
            unplaced += 1  # PLT stubs, linker-made code
            continue
        allowed = object_level(spans[k][2])
        counts[LEVELS[allowed]][LEVELS[lv]] += 1
        if lv > allowed:
            bad.append((LEVELS[allowed], LEVELS[lv], name, os.path.basename(spans[k][2])))
    if args.summary or bad:
        for c in LEVELS:
            names = {"sse": "baseline objects", "avx": "AVX2 objects", "avx512": "AVX-512 objects"}
            print(f"{names[c]:16s} functions by widest instructions: "
                  + ", ".join(f"{k} {counts[c][k]}" for k in LEVELS))
    if bad:
        print(f"{len(bad)} functions use instructions beyond their object's instruction set:")
        for allowed, lv, name, obj in sorted(bad)[:40]:
            print(f"  [{obj} ({allowed}) has {lv}] {name[:160]}")
        return 1
    if not counts["avx"]["avx"] or not counts["avx512"]["avx512"]:
        print("the AVX2 or AVX-512 copy holds no wide instruction: its target did not apply")
        return 1
    print(f"{os.path.basename(so)}: {sum(counts['sse'].values())} functions of the baseline objects use SSE only "
          f"(x86-64-v2); {counts['avx']['avx']} of the AVX2 objects use AVX2, {counts['avx512']['avx512']} of the "
          f"AVX-512 objects use AVX-512")
    return 0


if __name__ == "__main__":
    sys.exit(main())
