"""What the small commands (prune-export, prune-report) share: usage errors and bad input as one line, exit 2."""

import argparse
import os
import sys
from collections.abc import Callable

from pruning_cli.errors import UserError

EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is the same single line as every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see {self.prog} --help)")


def run_command(prog: str, command: Callable[[], str]) -> int:
    """Print what `command` returns; a UserError becomes `<prog>: error: ...` on stderr and exit code 2."""
    try:
        print(command())
    except UserError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # `prune-report ... | head`: the reader left; the files are already written
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
