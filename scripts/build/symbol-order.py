#!/usr/bin/env python3
"""Writes build/symbol-order.ld, `ftshop`'s code layout, from callgrind profiles of the suite.

Usage: symbol-order.py BIN OUT CALLGRIND_FILE...

Each callgrind file is one process of `ftshop up` (the supervisor or a member), recorded with
`--demangle=no --compress-strings=no --compress-pos=no` (scripts/build/symbol-order.sh). The
functions of BIN that ran in any of them are written to OUT as a linker script that puts their
sections first in `.text`, grouped by the set of roles (supervisor, ecommerce, store, exchange,
fidelity) that ran them, and hottest first (instructions, summed over the processes) within a
group. Linked with it (build.rs), the code each process runs then sits on a few contiguous
pages instead of being spread over the whole text, so a process maps (and keeps resident) far
fewer pages of the binary: the kernel maps code in 64 KiB windows around each fault
("fault-around"), so one function touched per window used to map all of it.

This is the "orderfile" technique (Chromium's and Android's orderfiles, Firefox's section
ordering, HFSort in Facebook's HHVM); here it is built from a full trace of which functions ran
(callgrind) instead of sampling, so once-run start-up code is grouped too.
"""
import collections
import re
import subprocess
import sys

# Roles whose groups are kept together first: the replicated members (two processes each),
# then the rest.
ROLE_ORDER = ["store", "exchange", "ecommerce", "fidelity", "supervisor"]


def role_of(cmd):
    words = cmd.split()
    if "up" in words[1:2]:
        return "supervisor"
    if "serve" in words[:-1]:
        return words[words.index("serve") + 1]
    return None


def read_profile(path, binpath):
    """(role, {symbol: self instructions}) of one callgrind file, for BIN's functions only."""
    role, ob, fn, after_call = None, None, None, False
    cost = collections.Counter()
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("cmd:"):
                role = role_of(line[4:].strip())
            elif line.startswith("ob="):
                ob = line[3:].strip()
            elif line.startswith("fn="):
                fn, after_call = line[3:].strip(), False
            elif line.startswith("calls="):
                after_call = True  # the next cost line is the call's inclusive cost
            elif line[:1].isdigit():
                if after_call:
                    after_call = False
                elif ob == binpath and fn:
                    cost[fn] += int(line.split()[1])
    return role, cost


def text_symbols(binpath):
    """{symbol: address} of BIN's functions, and {address: [every symbol there]}: rustc merges
    identical functions into aliases of one (LLVM's MergeFunctions), and a profile may name any
    of them while only one names the function's section."""
    out = subprocess.run(["nm", "--defined-only", binpath], capture_output=True, text=True,
                         check=True).stdout
    address, aliases = {}, collections.defaultdict(list)
    for m in re.finditer(r"^([0-9a-f]+) [tTwW] (\S+)$", out, re.M):
        address[m.group(2)] = int(m.group(1), 16)
        aliases[int(m.group(1), 16)].append(m.group(2))
    return address, aliases


HEADER = """\
/* The code `ftshop up` runs, laid out together: written by scripts/build/symbol-order.sh from
 * callgrind traces of the suite (start-up, purchases, idle, stop), used by build.rs for release
 * builds (lld or GNU ld). Each line is one function's section (-ffunction-sections): first by exact
 * symbol, then again with the symbol's hash as a wildcard (the hash changes with the toolchain,
 * Cargo.lock and the features a build resolves). Regenerate it, never edit it by hand. */
"""


def compiler(binpath):
    """The rustc that built BIN, from its `.comment` section (exact names match its builds)."""
    out = subprocess.run(["readelf", "-p", ".comment", binpath], capture_output=True,
                         text=True).stdout
    found = re.search(r"rustc version [^\n]*?\)", out)
    return found.group(0) if found else "an unknown rustc"


def section_pattern(symbol):
    """The glob for SYMBOL's section in any build: legacy Rust symbols end with a 16-digit hash
    (`17h<hex>E`), v0 ones carry crate disambiguators (`Cs<base62>_`), and LTO may add a
    numbered suffix (`.1234`) to a local symbol; all three change from one toolchain,
    Cargo.lock or feature set to another (and the suffix with the code)."""
    stem = re.sub(r"(\.[0-9]+)+$", "", symbol)
    pattern = re.sub(r"17h[0-9a-f]{16}E$", "17h*E", stem)
    if pattern.startswith("_R"):
        pattern = re.sub(r"Cs[0-9A-Za-z]+_", "Cs*_", pattern)
    return pattern + ("*" if stem != symbol else "")


def main():
    binpath, out, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    symbols, aliases = text_symbols(binpath)
    ran_by = collections.defaultdict(set)
    heat = collections.Counter()
    roles = set()
    for path in files:
        role, cost = read_profile(path, binpath)
        if role is None:
            continue
        roles.add(role)
        for fn, n in cost.items():
            if fn in symbols:
                ran_by[fn].add(role)
                heat[fn] += n
    missing = set(ROLE_ORDER) - roles
    if missing:
        sys.exit(f"symbol-order.py: no profile of {sorted(missing)}")

    def group_key(fn):
        return tuple(role not in ran_by[fn] for role in ROLE_ORDER)

    ordered = sorted(ran_by, key=lambda fn: (group_key(fn), -heat[fn], fn))
    # Each function's section under any of its names; `.text.unlikely.` holds the functions
    # LLVM deems cold (`#[cold]`, paths to a panic), which start-up often runs. First the exact
    # names: a build with the same toolchain, Cargo.lock and features as the profiled one (the
    # README's `cargo build --release`, the Dockerfile's) matches them all and gets the tight
    # layout. Then the same functions with their hashes as wildcards, for any other build: it
    # gets them in the same order, with every other instantiation of a generic function beside
    # the one that ran (their legacy names differ only in the hash). Either way a section goes
    # where its first matching line says.
    exact = list(dict.fromkeys(name for fn in ordered for name in aliases[symbols[fn]]))
    patterns = list(dict.fromkeys(section_pattern(name) for name in exact))
    exact_set = set(exact)
    patterns = [p for p in patterns if p not in exact_set]
    with open(out, "w") as f:
        f.write(HEADER)
        f.write(f"/* Made from a build by {compiler(binpath)}. */\n")
        f.write("SECTIONS\n{\n  .text : {\n")
        f.write("".join(f"    *(.text.{p} .text.unlikely.{p})\n" for p in exact + patterns))
        f.write("  }\n}\nINSERT AFTER .init;\n")
    print(f"symbol-order.py: {len(ordered)} functions that ran, of {len(set(symbols.values()))}"
          f" in the binary ({len(patterns)} section patterns), written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
