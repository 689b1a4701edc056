"""Function-diff speed, in-process: the corpus's object pairs, and large generated pairs.

    .venv/bin/python benchmarks/diff.py [--repeat N] [--functions N] [--profile]

Prints, for each set, the diff time (passes 1-5: read both objects, correlate, compare,
include, verify, extract) and the throughput in MB of object pairs (original + patched
bytes) per second. The generated pairs are C files with N functions (default 3000, each
in its own section, some with string literals, static locals and jump tables), compiled by
gcc with -ffunction-sections -fdata-sections; the patched file changes a few of them. Sizes
1x, 2x and 4x show whether the diff stays linear. The corpus set needs a built checkout
(`doit build-patch CASE` for the cases under patches/); missing pairs are skipped.
Each figure is the median of N runs (default 3).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xsplice_build.diff.engine import diff_objects  # noqa: E402
from xsplice_build.diff.extract import Extract  # noqa: E402
from xsplice_build.diff.profile import XEN_X86_64  # noqa: E402

CFLAGS = ["-O2", "-std=gnu11", "-ffreestanding", "-fpic", "-fno-stack-protector", "-fno-asynchronous-unwind-tables",
          "-fcf-protection=branch", "-mno-red-zone", "-ffunction-sections", "-fdata-sections", "-c"]
CHANGED_EVERY = 500  # one changed function per this many


def generated_source(functions: int, patched: bool) -> str:
    lines = ["void printk(const char *fmt, ...);", "extern long table[64];"]
    for number in range(functions):
        bound = 17 if patched and number % CHANGED_EVERY == 7 else 16
        if number % 3 == 0:
            lines.append(f"long f{number}(long x) {{ static long calls; calls++; "
                         f"if (x > {bound}) printk(\"f{number}: %ld\\n\", x); return x * {number} + calls; }}")
        elif number % 3 == 1:
            lines.append(f"long f{number}(int op, long x) {{ switch (op) {{ case 0: return f{number - 1}(x); "
                         f"case 1: return x + {bound}; case 2: return table[x & 63]; case 3: return x - {number}; "
                         f"case 4: return x ^ {number}; case 5: return x << 3; default: return -1; }} }}")
        else:
            lines.append(f"long f{number}(long x) {{ return table[(x + {bound}) & 63] * {number}; }}")
    return "\n".join(lines) + "\n"


def compile_pair(directory: Path, functions: int) -> tuple[Path, Path]:
    objects = []
    for patched in (False, True):
        source = directory / f"gen{functions}{'-patched' if patched else ''}.c"
        source.write_text(generated_source(functions, patched))
        output = source.with_suffix(".o")
        subprocess.run(["gcc", *CFLAGS, str(source), "-o", str(output)], check=True)
        objects.append(output)
    return objects[0], objects[1]


def diff_pair(original: Path, patched: Path, label: str) -> int:
    """One full diff (passes 1-5); returns the number of functions it patches."""
    result = diff_objects(original, patched, label, XEN_X86_64)
    if result.refusals:  # as the pipeline: a refused pair is not extracted
        return 0
    extract = Extract()
    extract.add(result)
    _, functions = extract.finish()
    return len(functions)


def timed(pairs: list[tuple[Path, Path, str]], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for original, patched, label in pairs:
            diff_pair(original, patched, label)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def corpus_pairs() -> list[tuple[Path, Path, str]]:
    pairs = []
    work = REPO / "work" / "minixen"
    for record in sorted(work.glob("patches/*/patched.json")):
        for change in json.loads(record.read_text())["changed"]:
            if change["original"]:
                pairs.append((work / "orig" / "tree" / change["original"],
                              record.parent / "objects" / f"{change['object']}.XSPLICE", change["object"]))
    return [pair for pair in pairs if pair[0].exists() and pair[1].exists()]


def report(name: str, pairs: list[tuple[Path, Path, str]], repeat: int) -> None:
    size = sum(original.stat().st_size + patched.stat().st_size for original, patched, _ in pairs)
    seconds = timed(pairs, repeat)
    print(f"{name:<28} {len(pairs):>4} pair(s) {size / 1e6:8.2f} MB {seconds:8.3f} s {size / 1e6 / seconds:8.2f} MB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--functions", type=int, default=3000)
    parser.add_argument("--profile", action="store_true", help="print the hottest functions of the 4x diff")
    arguments = parser.parse_args()
    corpus = corpus_pairs()
    if corpus:
        report("corpus (minixen cases)", corpus, arguments.repeat)
    else:
        print("corpus: no built cases (run `doit build-patch CASE` first)")
    with tempfile.TemporaryDirectory() as directory:
        for factor in (1, 2, 4):
            functions = arguments.functions * factor
            original, patched = compile_pair(Path(directory), functions)
            report(f"generated {factor}x ({functions} functions)", [(original, patched, "gen.o")],
                   arguments.repeat)
            if arguments.profile and factor == 4:
                profiler = cProfile.Profile()
                profiler.runcall(diff_pair, original, patched, "gen.o")
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
