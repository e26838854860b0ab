"""The `cyclerctl` command. Each subcommand lives beside the code it drives (protocol/commands.py,
engine/commands.py, ...); this module assembles them and turns every error a person can fix into
one line on stderr and a non-zero exit code — never a traceback for a user mistake."""

from __future__ import annotations

import sys

import typer

from . import __version__
from .errors import CyclerError

app = typer.Typer(
    name="cyclerctl",
    help="Run electrochemical test protocols on coin cells: simulated or real instruments, live analysis, MQTT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cyclerctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """cyclerctl: battery cycler control."""


def _register() -> None:
    # (module, [(command name, function name)]) — order is the order in --help.
    from importlib import import_module

    table = [
        ("cyclerctl.engine.commands", [("demo", "demo")]),
        ("cyclerctl.protocol.commands", [("validate", "validate"), ("plan", "plan")]),
        ("cyclerctl.engine.commands", [("run", "run"), ("resume", "resume"), ("export", "export")]),
        ("cyclerctl.analysis.commands", [("analyze", "analyze")]),
        ("cyclerctl.report.commands", [("report", "report")]),
        ("cyclerctl.mqtt.commands", [("monitor", "monitor")]),
        ("cyclerctl.drivers.commands", [("sim-instrument", "sim_instrument")]),
    ]
    for module, commands in table:
        mod = import_module(module)
        for name, func in commands:
            app.command(name)(getattr(mod, func))


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; map errors to one line and an exit code."""
    try:
        rv = app(args=argv, standalone_mode=False)
        if isinstance(rv, int) and not isinstance(rv, bool):
            return rv  # click returns typer.Exit(n)'s code instead of raising in this mode
    except CyclerError as exc:
        typer.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except FileNotFoundError as exc:
        typer.echo(f"error: file not found: {exc.filename or exc}", err=True)
        return 2
    except PermissionError as exc:
        typer.echo(f"error: permission denied: {exc.filename or exc}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 1
    except Exception as exc:  # click usage errors (typer may vendor its own click)
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            return int(exc.exit_code)
        if type(exc).__name__ == "Exit" and hasattr(exc, "exit_code"):
            return int(exc.exit_code)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
