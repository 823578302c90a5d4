"""Where a test run's time went: ``python -m tests.times FILE [N]`` reads the JSON lines that
``ESC_DIST_TEST_TIMES=FILE`` made the tests write (tests/conftest.py) and prints the seconds per
test file (setup, call and teardown together; a session fixture counts where it was first
built) and the N slowest tests (default 30)."""

import json
import sys
from collections import defaultdict


def main(argv: list[str]) -> None:
    path, n = argv[0], int(argv[1]) if len(argv) > 1 else 30
    per_test: dict[str, float] = defaultdict(float)
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # the line a run cut short was writing
                continue
            per_test[r["test"]] += r["seconds"]
    per_file: dict[str, float] = defaultdict(float)
    for test, s in per_test.items():
        per_file[test.split("::")[0]] += s
    total = sum(per_file.values())
    print(f"{len(per_test)} tests, {total / 60:.1f} min")
    for name, s in sorted(per_file.items(), key=lambda x: -x[1]):
        print(f"{s / 60:7.1f} min  {name}")
    print()
    for test, s in sorted(per_test.items(), key=lambda x: -x[1])[:n]:
        print(f"{s:7.0f} s  {test}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except BrokenPipeError:  # piped into head
        sys.stderr.close()
