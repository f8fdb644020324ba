"""`--json` everywhere a table is printed: every ring1 command is either one that prints a
table or report, and then has a JSON form, or is listed here with why it has none. A new
command fails this test until it is classified."""

from __future__ import annotations

import argparse
import json

import pytest

from ring1.runtime.cli import build_parser, main

# command -> the option that gives its output as JSON (each has its own test of the JSON).
JSON_OPTION = {
    "spec coverage": "--json",  # tests/test_coverage.py
    "exec": "--json",  # below
    "run": "--json-stats",  # the statistics table (--stats, stderr): tests/test_guests.py
    "inspect": "--json",  # the unit view and --list: tests/test_guests.py
    "bench interp": "--json",  # tests/test_bench.py
    "bench nano": "--json",
    "bench startup": "--json",
    "bench boot": "--json",  # tests/test_bench_boot.py
}
# Commands that print no table.
NO_TABLE = {
    "spec check": "a pass/fail check: a summary line and compiler-style error lines; its exit status is the result",
}


def leaf_commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    leaves: dict[str, argparse.ArgumentParser] = {}
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {prefix.strip(): parser}
    for action in subs:
        for name, child in action.choices.items():
            leaves.update(leaf_commands(child, f"{prefix} {name}"))
    return leaves


def test_every_table_has_a_json_form() -> None:
    leaves = leaf_commands(build_parser())
    assert set(leaves) == set(JSON_OPTION) | set(NO_TABLE), "classify the new command here"
    for command, option in JSON_OPTION.items():
        options = {s for a in leaves[command]._actions for s in a.option_strings}
        assert option in options, command


def test_exec_json_is_the_register_table(capsys: pytest.CaptureFixture[str]) -> None:
    """`ring1 exec --json` gives what the text prints, as numbers."""
    argv = ["exec", "--hex", "01 d8", "--set", "eax=1,ebx=2"]  # add eax, ebx
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["eax"] == 3 and doc["ebx"] == 2 and doc["instructions"] == 1 and doc["stop"] == "end"
    for name in ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags"):
        assert f"{name}={doc[name]:08x}" in text, name
    assert f"instructions={doc['instructions']}" in text and f"stop={doc['stop']}" in text
