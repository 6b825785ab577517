"""The ``dask-em`` command line: one module per command, each with its parser and its
``run(args)``.

    dask-em fit MODEL INPUT --components K --out MODEL.zarr [--checkpoint C [--resume]]
    dask-em sweep MODEL INPUT --components 1:10 --out DIR
    dask-em predict MODEL.zarr INPUT --out LABELS.zarr
    dask-em score MODEL.zarr INPUT
    dask-em info MODEL.zarr
    dask-em make-data MODEL OUT.zarr
    dask-em demo

A new command is a module here with ``add_parser(commands)`` and ``run(args)``, listed
in :data:`COMMANDS`.

Exit status: 0 on success; 2 on bad usage or bad input, with a one-line message on
stderr (``--verbose`` adds the traceback, and the workers' log lines of a LocalCluster
started here); 3 when the cluster fails (no scheduler at the address, workers lost); 1 on
any other failure; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from dask_em.cli import demo, fit, info, make_data, predict, score, sweep
from dask_em.cli.common import UsageError
from dask_em.engine import cluster_errors

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CLUSTER, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

#: The commands, in the order ``dask-em --help`` lists them.
COMMANDS = (fit, sweep, predict, score, info, make_data, demo)

__all__ = ["COMMANDS", "UsageError", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line: ``dask-em fit: error: ...``."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dask-em",
        description="Fit latent-variable models with EM on data larger than memory, on Dask.",
        epilog="Exit status: 0 success, 2 bad usage or input, 3 cluster failure, 1 other.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (see module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, or a usage error already printed
        return exit_request.code
    try:
        return _run_verbosely(args) if getattr(args, "verbose", False) else args.run(args)
    except (
        UsageError,
        ValueError,
        FloatingPointError,
        FileExistsError,
        FileNotFoundError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
    ) as error:
        print(f"dask-em: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dask-em: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early (``dask-em ... | head``)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except cluster_errors() as error:
        print(f"dask-em: cluster error: {_one_line(error)}", file=sys.stderr)
        return EXIT_CLUSTER
    except OSError as error:
        print(f"dask-em: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_FAILURE


def _run_verbosely(args: argparse.Namespace) -> int:
    """``--verbose``: the library's log lines on stderr, and the traceback of a failure
    before its one-line message."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    package = logging.getLogger("dask_em")
    package.addHandler(handler)
    try:
        return args.run(args)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        package.removeHandler(handler)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
