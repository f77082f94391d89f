"""Checks that docs/CONTRACT.md section 2, the normative list of settings,
names every environment variable src/config.rs reads, and names none it
does not read. Prints each difference; exits 1 if there is one. Run by
`make lint`.

    python3 scripts/check-config-vars.py

A variable is any all-capitals string literal in src/config.rs outside its
tests (config.rs reads the environment only through such names); a
documented one is a backquoted all-capitals name in the first column of
section 2's table.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|[A-Z]{2,}"


def read_by_config():
    source = (ROOT / "src/config.rs").read_text()
    # The tests set variables of their own; what the code reads ends there.
    code = source.split("#[cfg(test)]\nmod tests", 1)[0]
    return set(re.findall(rf'"({NAME})"', code))


def documented():
    text = (ROOT / "docs/CONTRACT.md").read_text()
    match = re.search(r"^## 2\..*?$(.*?)^## ", text, re.S | re.M)
    if not match:
        sys.exit("docs/CONTRACT.md: no section 2")
    names = set()
    for line in match.group(1).splitlines():
        cells = line.split("|")
        if len(cells) > 2:
            names.update(re.findall(rf"`({NAME})`", cells[1]))
    return names


def main():
    read, listed = read_by_config(), documented()
    if not read:
        sys.exit("src/config.rs: no variable names found; has the way it reads them changed?")
    problems = [f"src/config.rs reads {n}, docs/CONTRACT.md section 2 does not name it"
                for n in sorted(read - listed)]
    problems += [f"docs/CONTRACT.md section 2 names {n}, src/config.rs never reads it"
                 for n in sorted(listed - read)]
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print(f"check-config-vars: the {len(read)} variables config.rs reads are in CONTRACT.md section 2")


main()
