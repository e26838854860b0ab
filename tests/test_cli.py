"""The CLI shell: exit codes and one-line errors."""

import typer

from cyclerctl import cli
from cyclerctl.errors import ConfigError


def test_typer_exit_code_is_returned():
    @cli.app.command("zz-exit-for-test", hidden=True)
    def _exit():
        raise typer.Exit(3)

    assert cli.main(["zz-exit-for-test"]) == 3


def test_cycler_error_is_one_line_and_nonzero(capsys):
    @cli.app.command("zz-error-for-test", hidden=True)
    def _err():
        raise ConfigError("bad option; use --speed max or a number")

    assert cli.main(["zz-error-for-test"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: bad option; use --speed max or a number"


def test_unknown_command_is_a_usage_error():
    assert cli.main(["no-such-command"]) == 2


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("demo", "validate", "plan", "run", "resume", "export", "analyze", "report", "monitor", "sim-instrument"):
        assert name in out
