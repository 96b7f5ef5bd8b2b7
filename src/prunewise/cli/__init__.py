"""The `prunewise` command: a thin shell over the library functions a Python user calls.

``options`` holds the option types and groups, ``output`` what is printed, ``loading`` how
checkpoints and data are read, ``commands`` and ``prune`` the commands. Nothing is imported
from torch until a command runs, so every ``--help`` answers at once.

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback), 1 internal failure,
130 Ctrl-C (``prunewise: interrupted``), 143 SIGTERM (``prunewise: terminated``).
"""
from __future__ import annotations

import re
import signal
import sys
import threading
import traceback

import click

from ..errors import PrunewiseError, out_of_memory
from . import commands, prune


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.version_option(package_name="prunewise")
@click.pass_context
def cli(ctx):
    """prunewise: FVW (unstructured) and SLIMING (structured) pruning for PyTorch."""
    if ctx.invoked_subcommand is None:  # no command: the help, as with --help
        click.echo(ctx.get_help())


for _command in commands.COMMANDS + prune.COMMANDS:
    cli.add_command(_command)


def _rank_note() -> str:
    dist = sys.modules.get("prunewise.dist")  # loaded only once a command imported torch
    return f" (rank {dist.rank()} of {dist.world()})" if dist and dist.active() else ""


def _short_words(message: str) -> str:
    """One line, each run of 200+ non-blank characters (a pasted value, a long path) cut to its
    ends, so an error about a huge option value stays short."""
    line = " ".join(message.split())
    return re.sub(r"\S{200,}", lambda m: f"{m[0][:120]}...{m[0][-60:]}", line)


def _failure(e: Exception) -> int:
    """An allocation that failed is one line (exit 2); anything else is a bug: its traceback is
    kept for the report (exit 1)."""
    if out_of_memory(e):
        wanted = re.search(r"allocate (\d+) bytes", str(e))
        asked = f" (an allocation of {int(wanted[1]):,} bytes failed)" if wanted else ""
        click.echo(f"prunewise: error{_rank_note()}: out of memory{asked}: use a smaller "
                   f"--batch-size or input size, or a machine with more memory", err=True)
        return 2
    traceback.print_exc()
    click.echo("prunewise: internal error (please report it with the traceback above)", err=True)
    return 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds as Ctrl-C does (temp files
    removed, resume files kept)."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _stopped(e: BaseException) -> int:
    """Ctrl-C (SIGINT) or SIGTERM: one line, exit 130 or 143."""
    if isinstance(e, Terminated) or isinstance(e.__cause__, Terminated) \
            or isinstance(e.__context__, Terminated):
        click.echo("prunewise: terminated", err=True)
        return 143
    click.echo("prunewise: interrupted", err=True)
    return 130


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and map errors to exit codes (2 bad input, 1 internal, 130
    Ctrl-C, 143 SIGTERM)."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        rv = cli.main(args=argv, prog_name="prunewise", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except (PrunewiseError, click.ClickException) as e:
        msg = e.format_message() if isinstance(e, click.ClickException) else str(e)
        click.echo(f"prunewise: error{_rank_note()}: {_short_words(msg)}", err=True)
        code = 2
    except (click.exceptions.Abort, KeyboardInterrupt) as e:
        code = _stopped(e)
    except OSError as e:  # our own paths (unreadable, unwritable, disk full): bad input
        if e.filename is None:
            code = _failure(e)
        else:
            click.echo(f"prunewise: error: {_short_words(f'{e.strerror or e}: {e.filename}')}",
                       err=True)
            code = 2
    except Exception as e:  # noqa: BLE001 -- out of memory, or a genuine internal failure
        code = _failure(e)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    dist = sys.modules.get("prunewise.dist")
    if code == 0 and dist is not None:
        dist.finish()  # after a failure the peers are stopped by torchrun or the timeout
    return code


def entry() -> None:
    """The ``prunewise`` command and ``python -m prunewise``: exit with :func:`main`'s code
    (under torchrun through :func:`prunewise.dist.leave`, which skips the interpreter shutdown
    that can abort in the collective backend's threads)."""
    code = main()
    dist = sys.modules.get("prunewise.dist")
    if dist is not None:
        dist.leave(code)
    sys.exit(code)
