"""`python -m ring1.codegen [generate | generate --check]`: the generator's own entry point (used by the Makefile)."""

from __future__ import annotations

import sys
from pathlib import Path

from ring1.codegen.ast import SpecError


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cmd = argv[0] if argv else "generate"
    root = repo_root()
    try:
        if cmd == "generate" and "--check" in argv[1:]:
            from ring1.codegen.generate import stale_files

            stale = stale_files(root)
            for name in stale:
                print(f"generated/{name} is stale: run `make generate` and commit it", file=sys.stderr)
            return 1 if stale else 0
        if cmd == "generate":
            from ring1.codegen.generate import generate

            changed = generate(root)
            for p in changed:
                print(f"wrote {p.relative_to(root)}")
            return 0
        print(f"unknown command {cmd!r}; use generate [--check]", file=sys.stderr)
        return 2
    except SpecError as err:
        print(err, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
