"""Every leaf command's `--help` shows an example of that very command (docs/cli.md promises it): the test walks
the whole command tree, so a new command without one fails here."""

from __future__ import annotations

import shlex
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from flotilla_client.cli.main import cli

GLOBAL_WITH_VALUE = {"--server", "--state-dir"}


def leaves(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None and sub.name == name, f"{name!r} loads {sub!r}"
            yield from leaves(sub, (*path, name))
    else:
        yield path


def runs(line: str, path: tuple[str, ...]) -> bool:
    """Does this help line run `flotilla <path>` (global options such as `--state-dir DIR` may come first)?"""
    words = shlex.split(line.split("#")[0].split("|")[0])
    if words[:1] != ["flotilla"]:
        return False
    words = words[1:]
    while words and words[0].startswith("-"):
        words = words[2:] if words[0] in GLOBAL_WITH_VALUE else words[1:]
    return tuple(words[: len(path)]) == path


LEAVES = list(leaves(cli))


def test_the_tree_is_walked() -> None:
    assert len(LEAVES) >= 40 and ("upgrade", "status") in LEAVES and ("clusters", "list") in LEAVES


@pytest.mark.parametrize("path", LEAVES, ids=" ".join)
def test_every_leaf_help_has_an_example_of_itself(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=120)
    assert result.exit_code == 0, result.output
    examples = [line.strip() for line in result.output.splitlines() if line.strip().startswith("flotilla ")]
    assert any(runs(line, path) for line in examples), (
        f"`flotilla {' '.join(path)} --help` shows no example of itself; add '\\b Example:' lines to its docstring"
    )
