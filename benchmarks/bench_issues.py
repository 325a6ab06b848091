"""Create N issues and list them; print the figures and their ratios to baselines from the same run.

    python benchmarks/bench_issues.py [N]

Baselines, measured here and now so that the ratios mean something on any machine:
- writing: dulwich committing N one-file changes of the same size, with no XML and no validation
  (what the store cannot avoid);
- listing: the real git reading every issue.xml of the branch (`git cat-file --batch`), which is
  what any list must at least do without an index.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time

from mailtrack.tracker.changes import new_issue
from mailtrack.tracker.model import Person
from mailtrack.tracker.store import Change, Store


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    who = Person("Bench", "bench@example.org")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("base", "repo"):
            subprocess.run(["git", "init", "-q", "--bare", f"{tmp}/{name}"], check=True)
        base = Store.open(f"{tmp}/base")
        sample = b"x" * 900  # about the size of an issue.xml

        def baseline_writes() -> None:
            for i in range(n):
                base.update(lambda s, i=i: Change(f"blob {i}", {f"{i % 256:02x}/{i:038x}/issue.xml": sample + str(i).encode()}), who)

        def issue_writes() -> None:
            for i in range(n):
                store.update(lambda s, i=i: new_issue(s, who, f"Issue number {i}", "Some description\n" * 5)[1], who)

        store = Store.open(f"{tmp}/repo")
        store.update(lambda s: Change("init issues", {"project.xml": s.project().to_bytes()}), who)
        t_base_w = timed(baseline_writes)
        t_new = timed(issue_writes)

        def git_read_all() -> None:
            paths = subprocess.run(["git", "-C", f"{tmp}/repo", "ls-tree", "-r", "--name-only", "issues"],
                                   capture_output=True, text=True, check=True).stdout.split()
            batch = "".join(f"issues:{p}\n" for p in paths if p.endswith("issue.xml"))
            subprocess.run(["git", "-C", f"{tmp}/repo", "cat-file", "--batch"], input=batch.encode(), capture_output=True, check=True)

        def cli_list() -> None:
            subprocess.run([sys.executable, "-m", "mailtrack.app.git_issues", "--repo", f"{tmp}/repo", "list", "--all"],
                           capture_output=True, check=True)

        t_base_l = timed(git_read_all)
        t_list = timed(cli_list)
        base.close()
        store.close()
    print(f"issues: {n}")
    print(f"new:  {n / t_new:8.1f} issues/s   baseline {n / t_base_w:8.1f} commits/s   ratio {t_new / t_base_w:5.2f}x")
    print(f"list: {t_list:8.3f} s          baseline {t_base_l:8.3f} s          ratio {t_list / t_base_l:5.2f}x")


if __name__ == "__main__":
    main()
