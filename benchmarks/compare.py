"""Compare the benchmarks of two revisions on this machine and flag only significant regressions.

    python -m benchmarks.compare BASE [HEAD] [--rounds 7] [--threshold 20] [--alpha 0.01]
                                 [--disk-tolerance 1] [--memory-tolerance 5] [--keep DIR] [-- PYTEST OPTIONS]

BASE and HEAD are git revisions; HEAD defaults to the working tree, uncommitted changes
included. Each revision other than the working tree is checked out in a temporary git worktree.
The chosen benchmarks (default: `DEFAULT_SUBSET`) run with this interpreter in one fresh
process per revision and round. The rounds alternate which side runs first (base-head,
head-base, ...), so that neither drift of the machine nor the position within a round favours
a side. A benchmark regressed when its head median is more than `threshold` percent slower
than its base median and a one-sided Mann-Whitney U test on the per-round medians, with
Bonferroni's correction for the number of benchmarks judged, gives p < `alpha`: the chance
that an unchanged tree fails anywhere in the table stays below `alpha`. It also regressed when
its disk bytes per image grew by more than `disk-tolerance` percent, or when its peak memory
grew by more than `memory-tolerance` percent with every head round above every base round by
more than `MEMORY_FLOOR` bytes.
Each round is reported on stderr as it finishes.
Exit status: 0 no regression, 1 regression, 2 the comparison could not run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Selected by test name, not by file, so that revisions with other file layouts compare too.
DEFAULT_SUBSET = [
    "-k",
    "(test_read_many or test_store_many) and not cold",
    "--image-counts=500",
    "--image-sizes=32x32x3",
    "--benchmark-max-time=0.2",
    "--benchmark-min-rounds=3",
]


MEMORY_FLOOR = 64 * 1024  # less growth of peak memory than this is never flagged: a few Python objects


@dataclass
class Samples:
    """One benchmark's per-round medians (seconds), disk bytes per image and peak memory, for one revision."""

    medians: list[float] = field(default_factory=list)
    disk: list[float] = field(default_factory=list)
    memory: list[float] = field(default_factory=list)


@dataclass
class Row:
    name: str
    base: Samples
    head: Samples
    ratio: float
    low: float
    high: float
    p_slower: float
    p_faster: float
    disk_growth: float | None
    memory_growth: float | None
    verdict: str


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, pytest_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    options = parser().parse_args(ours)
    try:
        rows = compare(options, pytest_args or DEFAULT_SUBSET)
    except ComparisonError as error:
        print(f"compare: {error}", file=sys.stderr)
        return 2
    print(table(rows, options))
    return 1 if any("REGRESSED" in row.verdict for row in rows) else 0


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(
        prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parse.add_argument("base", help="git revision to compare against, e.g. HEAD~1 or main")
    parse.add_argument("head", nargs="?", help="git revision to compare (default: the working tree)")
    parse.add_argument("--rounds", type=int, default=7, help="runs per revision (default 7)")
    parse.add_argument("--threshold", type=float, default=20.0, help="slowdown in percent to flag (default 20)")
    parse.add_argument("--alpha", type=float, default=0.01, help="significance level (default 0.01)")
    parse.add_argument("--disk-tolerance", type=float, default=1.0, help="disk growth in percent to flag (default 1)")
    parse.add_argument(
        "--memory-tolerance", type=float, default=5.0, help="peak memory growth in percent to flag (default 5)"
    )
    parse.add_argument("--keep", type=Path, help="keep every run's pytest-benchmark JSON in this directory")
    return parse


class ComparisonError(Exception):
    """The comparison could not run (bad revision, failing benchmarks, no common benchmarks)."""


def compare(options: argparse.Namespace, pytest_args: list[str]) -> list[Row]:
    rounds_needed(1, options)
    root = Path(git(Path.cwd(), "rev-parse", "--show-toplevel"))
    with tempfile.TemporaryDirectory(prefix="benchmarks-compare-") as scratch:
        runs = Path(options.keep or scratch)
        runs.mkdir(parents=True, exist_ok=True)
        trees = {}
        try:
            for side, revision in (("base", options.base), ("head", options.head)):
                trees[side] = checkout(root, revision, Path(scratch) / side) if revision else root
                check_imports(trees[side])
            samples: dict[str, dict[str, Samples]] = {"base": {}, "head": {}}
            for round_number in range(options.rounds):
                took = {}
                for side in running_order(round_number):
                    output = runs / f"{side}-{round_number}.json"
                    started = time.monotonic()
                    run_benchmarks(trees[side], pytest_args, output)
                    took[side] = time.monotonic() - started
                    collect(output, samples[side])
                rounds_needed(len(samples["base"].keys() & samples["head"].keys()), options)
                print(
                    f"compare: round {round_number + 1} of {options.rounds} done "
                    f"(base {took['base']:.0f} s, head {took['head']:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            for tree in trees.values():
                if tree != root:
                    git(root, "worktree", "remove", "--force", str(tree))
    common = sorted(samples["base"].keys() & samples["head"].keys())
    if not common:
        raise ComparisonError("the two revisions share no benchmark in this selection")
    rows = [judge(name, samples["base"][name], samples["head"][name], options, len(common)) for name in common]
    for side, other in (("base", "head"), ("head", "base")):
        rows += [only(name, side) for name in sorted(samples[side].keys() - samples[other].keys())]
    return rows


def running_order(round_number: int) -> tuple[str, str]:
    """Which side runs first in a round: base in even rounds, head in odd ones."""
    return ("base", "head") if round_number % 2 == 0 else ("head", "base")


def smallest_p(rounds: int, judged: int) -> float:
    """The smallest corrected p-value `rounds` rounds a side can give: every head round beyond every base round."""
    return min(1.0, judged / math.comb(2 * rounds, rounds))


def rounds_needed(judged: int, options: argparse.Namespace) -> None:
    """Refuse a number of rounds with which no benchmark among `judged` could ever be flagged."""
    if smallest_p(options.rounds, judged) < options.alpha:
        return
    enough = next(n for n in range(options.rounds + 1, 100) if smallest_p(n, judged) < options.alpha)
    raise ComparisonError(
        f"--rounds {options.rounds} can never reach p < {options.alpha:g} over {judged} benchmark(s): "
        f"use --rounds {enough} or more"
    )


def git(tree: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=tree, capture_output=True, text=True, check=False)
    if result.returncode:
        raise ComparisonError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def checkout(root: Path, revision: str, where: Path) -> Path:
    commit = git(root, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    git(root, "worktree", "add", "--detach", "--quiet", str(where), commit)
    return where


def environment(tree: Path) -> dict[str, str]:
    """This interpreter's environment with `tree` first on the import path (ahead of an editable install)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    return env


def check_imports(tree: Path) -> None:
    """Make sure a run in `tree` measures that tree's `storage`, not an installed copy."""
    probe = [sys.executable, "-c", "import storage; print(storage.__file__)"]
    result = subprocess.run(probe, cwd=tree, env=environment(tree), capture_output=True, text=True, check=False)
    found = Path(result.stdout.strip() or ".").resolve()
    if result.returncode or tree.resolve() not in found.parents:
        raise ComparisonError(f"in {tree}, `import storage` finds {found} instead: {result.stderr.strip()}")


def run_benchmarks(tree: Path, pytest_args: list[str], output: Path) -> None:
    command = [sys.executable, "-m", "pytest", "--benchmark-only", "-q", "-p", "no:cacheprovider"]
    command += [f"--benchmark-json={output}", *pytest_args]
    result = subprocess.run(command, cwd=tree, env=environment(tree), capture_output=True, text=True, check=False)
    if result.returncode:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
        raise ComparisonError(f"benchmarks failed in {tree} (exit {result.returncode}):\n{tail}")


def collect(output: Path, into: dict[str, Samples]) -> None:
    for benchmark in json.loads(output.read_text())["benchmarks"]:
        samples = into.setdefault(benchmark["name"], Samples())
        samples.medians.append(benchmark["stats"]["median"])
        if "disk_bytes_per_image" in benchmark["extra_info"]:
            samples.disk.append(benchmark["extra_info"]["disk_bytes_per_image"])
        if "peak_memory_bytes" in benchmark["extra_info"]:
            samples.memory.append(benchmark["extra_info"]["peak_memory_bytes"])


def judge(name: str, base: Samples, head: Samples, options: argparse.Namespace, judged: int = 1) -> Row:
    """The verdict on one benchmark; its p-values are multiplied by the number of benchmarks `judged` (Bonferroni)."""
    try:
        from scipy.stats import mannwhitneyu
    except ImportError:
        raise ComparisonError("the comparison's test needs SciPy: pip install -e '.[test]'") from None

    ratio = statistics.median(head.medians) / statistics.median(base.medians)
    paired = [h / b for b, h in zip(base.medians, head.medians)]
    p_slower = min(1.0, judged * float(mannwhitneyu(head.medians, base.medians, alternative="greater").pvalue))
    p_faster = min(1.0, judged * float(mannwhitneyu(head.medians, base.medians, alternative="less").pvalue))
    disk_growth = None
    if base.disk and head.disk:
        disk_growth = statistics.median(head.disk) / statistics.median(base.disk) - 1
    limit = 1 + options.threshold / 100
    verdicts = []
    if ratio > limit and p_slower < options.alpha:
        verdicts.append("REGRESSED: slower")
    elif ratio < 1 / limit and p_faster < options.alpha:
        verdicts.append("faster")
    if disk_growth is not None and disk_growth > options.disk_tolerance / 100:
        verdicts.append("REGRESSED: bigger on disk")
    memory_growth = None
    if len(base.memory) == len(base.medians) and len(head.memory) == len(head.medians):
        memory_growth = statistics.median(head.memory) / max(statistics.median(base.memory), 1) - 1
        grew = min(head.memory) > max(base.memory) + MEMORY_FLOOR
        if memory_growth > options.memory_tolerance / 100 and grew:
            verdicts.append("REGRESSED: more memory")
    return Row(
        name,
        base,
        head,
        ratio,
        min(paired),
        max(paired),
        p_slower,
        p_faster,
        disk_growth,
        memory_growth,
        ", ".join(verdicts),
    )


def only(name: str, side: str) -> Row:
    samples = Samples()
    nan = float("nan")
    return Row(name, samples, samples, nan, nan, nan, 1.0, 1.0, None, None, f"only in {side}")


def table(rows: list[Row], options: argparse.Namespace) -> str:
    width = max(len("benchmark"), *(len(row.name) for row in rows))
    lines = [
        f"{'benchmark':<{width}}  {'base ms':>9}  {'head ms':>9}  {'ratio':>6}  {'per-round':>11}  "
        f"{'p':>6}  {'disk':>7}  {'memory':>7}  verdict",
    ]
    for row in rows:
        if row.verdict.startswith("only"):
            blank = f"{'':>9}  {'':>9}  {'':>6}  {'':>11}  {'':>6}  {'':>7}  {'':>7}"
            lines.append(f"{row.name:<{width}}  {blank}  {row.verdict}")
            continue
        p = row.p_slower if row.ratio >= 1 else row.p_faster
        disk = "" if row.disk_growth is None else f"{100 * row.disk_growth:+.1f}%"
        memory = "" if row.memory_growth is None else f"{100 * row.memory_growth:+.1f}%"
        lines.append(
            f"{row.name:<{width}}  {1e3 * statistics.median(row.base.medians):9.3f}  "
            f"{1e3 * statistics.median(row.head.medians):9.3f}  {row.ratio:5.2f}x  "
            f"{row.low:4.2f}-{row.high:4.2f}x  {p:6.4f}  {disk:>7}  {memory:>7}  {row.verdict}"
        )
    regressed = sum("REGRESSED" in row.verdict for row in rows)
    judged = sum(not row.verdict.startswith("only") for row in rows)
    lines.append(
        f"{options.rounds} rounds a side; flagged when slower by > {options.threshold:g}% with p < {options.alpha:g} "
        f"(p corrected for {judged} benchmarks), > {options.disk_tolerance:g}% more disk per image, or > "
        f"{options.memory_tolerance:g}% (and {MEMORY_FLOOR // 1024} KiB) more peak memory in every round. "
        + (f"{regressed} regressed." if regressed else "No regression.")
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
