"""A flag given twice is never silently half-read: list options accumulate, the others are refused
with an error that names the flag, in every command."""

from __future__ import annotations

import argparse

import pytest

from vitlens.cli import COMMAND_HELP, build_parser

COMMANDS = ["info", "zoo", *COMMAND_HELP]
ACCUMULATING = {("cost", "--input-size")}  # options whose values are naturally a list of items


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices[command]


def _value(action: argparse.Action) -> list[str]:
    if action.choices:
        return [str(next(iter(action.choices)))]
    n = action.nargs
    return ["1"] * (n if isinstance(n, int) else 1)


def _valued_options(command: str):
    _, p = _subparser(command)
    for a in p._actions:
        if a.option_strings and a.nargs != 0 and a.option_strings[0].startswith("--"):
            yield a


def _required(command: str) -> list[str]:
    _, p = _subparser(command)
    argv = []
    for a in p._actions:
        if a.required and a.option_strings:
            argv += [a.option_strings[0], *_value(a)]
        elif not a.option_strings and a.nargs not in ("?", "*"):  # a positional (the preset of reproduce)
            argv += _value(a)
    return argv


CASES = [(c, a.option_strings[0]) for c in COMMANDS for a in _valued_options(c)]


def test_every_command_has_valued_options_to_check():
    # fetch takes only preset names (a positional list) and switches
    assert {c for c, _ in CASES} >= (set(COMMAND_HELP) - {"fetch"}) | {"info"}


@pytest.mark.parametrize("command,flag", CASES, ids=[f"{c}{f}" for c, f in CASES])
def test_a_repeated_flag_accumulates_or_is_refused(command, flag, capsys):
    parser, p = _subparser(command)
    action = p._option_string_actions[flag]
    base = [command, *_required(command)]
    base = [x for i, x in enumerate(base) if not (x == flag or (i and base[i - 1] == flag))]
    once = parser.parse_args(base + [flag, *_value(action)])
    first = getattr(once, action.dest)
    if isinstance(action, (argparse._AppendAction, argparse._ExtendAction)) or (command, flag) in ACCUMULATING:
        twice = parser.parse_args(base + [flag, *_value(action), flag, *_value(action)])
        got = getattr(twice, action.dest)
        assert isinstance(got, list) and len(got) == 2 * len(first if isinstance(first, list) else [first])
        return
    with pytest.raises(SystemExit) as e:
        parser.parse_args(base + [flag, *_value(action), flag, *_value(action)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "more than once" in err


def test_cost_measures_every_input_size_given():
    parser, _ = _subparser("cost")
    args = parser.parse_args(["cost", "--vit", "x", "--out", "o", "--input-size", "224", "--input-size", "320", "64"])
    assert args.input_size == [224, 320, 64]


def test_info_input_size_twice_is_refused(capsys):
    parser, _ = _subparser("info")
    with pytest.raises(SystemExit):
        parser.parse_args(["info", "--model", "m", "--input-size", "224", "--input-size", "320"])
    assert "--input-size" in capsys.readouterr().err
