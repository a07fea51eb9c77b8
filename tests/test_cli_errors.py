"""The README's promise for every command: an error is one line `Error: ...`, a non-zero
exit, and no traceback, whatever the user gives (issue 13)."""

import pytest
from click.testing import CliRunner

from mlx_slm.cli import COMMANDS, main


def invoke(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input)


def one_line_error(result, code: int = 1) -> str:
    """The error line of a failed run, after checking there is nothing else."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["generate", "chat", "compare", "quiz", "bench"])
@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_a_seed_outside_64_bits_is_a_usage_error(command, seed):
    args = [command, "--seed", seed]
    if command in ("compare", "quiz"):
        args += ["-m", "some/model"]
    line = one_line_error(invoke(*args), code=2)
    assert "--seed" in line and "0<=x<=18446744073709551615" in line


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_usage_errors_are_one_line_that_points_to_help(command):
    line = one_line_error(invoke(command, "--no-such-option"), code=2)
    assert "No such option '--no-such-option'" in line
    assert line.endswith(f" {command} --help')")


def test_an_unknown_command_is_one_line():
    assert "No such command 'genrate'" in one_line_error(invoke("genrate"), code=2)
