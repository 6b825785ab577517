"""The two environments the speed benchmarks run in, each in its own process: as given,
and with the BLAS/OpenMP thread variables exported (as SLURM job scripts and HPC
profiles do), so that a LocalCluster's workers inherit them.

Two ways to run them: :func:`run_child`, one process per environment that measures
everything and exits (``poisson_memory.py``, the compilation probes), and
:func:`served_environments`, one process per environment set up once and then asked for
one fit at a time, each fit in both environments seconds apart (:func:`paired_round`;
``gmm.py``, ``hmm.py``), so that a ratio between the environments is not a ratio
between two stretches of a shared host's pace."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def environments() -> tuple[tuple[str, dict[str, str]], ...]:
    """(label, environment) of the two runs: this process' environment without the
    thread variables, and the same with each of them set to 2."""
    plain = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    exported = {**plain, **dict.fromkeys(THREAD_VARIABLES, "2")}
    return (("as given", plain), ("thread variables = 2", exported))


def run_child(script: str, argv: list[str], env: dict[str, str], flag: str = "--child") -> dict:
    """``script flag *argv`` run in ``env``; the last line it prints, read as JSON.  A
    child that fails raises RuntimeError with the end of what it wrote to stderr."""
    command = [sys.executable, script, flag, *argv]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


#: Prefix of the lines a served child answers with (anything else on its stdout is not
#: read as an answer).
ANSWER = "@@answer "


class Served:
    """``script --serve *argv`` running in ``env``, answering one JSON command at a time.

    The child reads a JSON line from stdin per command and prints ``ANSWER`` and a JSON
    line back (:func:`serve_commands`); its first answer is what it reports once set up.
    Two of them, one per environment, let a benchmark run each fit in both environments
    seconds apart instead of a process per environment minutes apart: on a shared host
    whose pace moves by a fifth from minute to minute, that pairs the two sides of a
    ratio in time.  Its stderr goes to a temporary file, shown when it fails.
    """

    def __init__(self, script: str, argv: list[str], env: dict[str, str]) -> None:
        self.command = [sys.executable, script, "--serve", *argv]
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._process = subprocess.Popen(
            self.command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, text=True, bufsize=1,
        )  # fmt: skip
        try:
            self.ready = self._answer()
        except BaseException:
            self.close()
            raise

    def _answer(self) -> Any:
        for line in self._process.stdout:
            if line.startswith(ANSWER):
                return json.loads(line[len(ANSWER) :])
        self._process.wait()
        self._stderr.seek(0)
        raise RuntimeError(f"{' '.join(self.command)} failed:\n{self._stderr.read()[-4000:]}")

    def ask(self, command: dict) -> Any:
        """The child's answer to ``command`` (a RuntimeError with the end of its stderr
        if it has stopped)."""
        with contextlib.suppress(BrokenPipeError):  # a child that died: its stderr below
            self._process.stdin.write(json.dumps(command) + "\n")
            self._process.stdin.flush()
        return self._answer()

    def close(self, timeout: float = 120.0) -> None:
        """Ask the child to stop (stdin closed), wait for it at most ``timeout`` seconds
        (reading what it still prints), then kill it."""
        try:
            if self._process.poll() is None:
                with contextlib.suppress(BrokenPipeError):
                    self._process.stdin.close()
                try:
                    self._process.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.communicate()
        finally:
            self._stderr.close()


def serve_commands(ready: dict, answer) -> None:
    """The child's side of :class:`Served`: ``ready`` printed, then ``answer(command)``
    printed for each JSON line of stdin until it closes."""
    # each answer on a line of its own, even after output left without a newline
    print("\n" + ANSWER + json.dumps(ready), flush=True)
    for line in sys.stdin:
        print("\n" + ANSWER + json.dumps(answer(json.loads(line))), flush=True)


@contextlib.contextmanager
def served_environments(script: str, argv: list[str]) -> Iterator[dict[str, Served]]:
    """``{label: Served}``, one child per environment of :func:`environments`, each set
    up before the first is asked anything; closed on leaving."""
    servers: dict[str, Served] = {}
    try:
        for label, env in environments():
            servers[label] = Served(script, argv, env)
        yield servers
    finally:
        for server in servers.values():
            with contextlib.suppress(Exception):  # every child closed, whatever one raises
                server.close()


#: A block of a round: (name, steps), each step (key, command); the answers of steps
#: whose key is None (setting up, tearing down) are not kept.
Block = tuple[str, list[tuple[str | None, dict]]]


def paired_round(servers: dict[str, Served], blocks: list[Block], round_: int) -> dict:
    """Each block of ``blocks``, in order, run whole in one environment and right after
    in the other: ``{label: {key: [answer]}}``.

    Which environment goes first alternates from round to round for every block (by
    the block's name, so whatever order a round gives its blocks), so that over an even
    number of rounds each leads as often; the two sides of an environments' ratio run
    seconds apart, not minutes.  A block is as small as a fit allows: one fit, or the
    fits that share a cluster started at its start and stopped at its end, so that no
    other cluster is up, idle, while a fit runs (a 2-core NumPy matmul here, best of 9,
    three times: 103.5-105.5 GFLOP/s with no cluster up, 93.3-99.0 beside one idle
    LocalCluster of 2 workers, 89.7-90.8 beside two).
    """
    out: dict = {label: {} for label in servers}
    labels = list(servers)
    names = sorted(name for name, _ in blocks)
    for name, steps in blocks:
        order = labels if (round_ + names.index(name)) % 2 == 0 else labels[::-1]
        for label in order:
            for key, command in steps:
                answer = servers[label].ask(command)
                if key is not None:
                    out[label].setdefault(key, []).append(answer)
    return out


def merged_rounds(rounds: list[dict]) -> dict:
    """The answers of :func:`paired_round` over several rounds as one ``{label: {key:
    [answer of each round]}}``, keys in the first round's order."""
    merged: dict = {}
    for out in rounds:
        for label, answers in out.items():
            for key, values in answers.items():
                merged.setdefault(label, {}).setdefault(key, []).extend(values)
    return merged


def environments_compared(seconds: dict[str, dict[str, list[float]]]) -> None:
    """Print each fit's seconds with the thread variables against as given (issue #11:
    within 1.1x): the ratio of the medians, and the median and range of the rounds'
    ratios, each of a fit in one environment and the same fit seconds before or after
    in the other (:func:`paired_round`).  ``seconds``: ``{label: {fit: [seconds per
    round]}}`` for the two environments, in :func:`environments`' order."""
    (plain, plain_fits), (exported, exported_fits) = seconds.items()
    print(f"\n## {exported} against {plain}: seconds per iteration, ratio")
    print("| fit | ratio of medians | median of the rounds' ratios | per round |")
    print("|---|---|---|---|")
    for key, as_given in plain_fits.items():
        with_variables = exported_fits[key]
        rounds = [b / a for a, b in zip(as_given, with_variables, strict=True)]
        print(
            f"| {key} | {statistics.median(with_variables) / statistics.median(as_given):.2f}x "
            f"| {statistics.median(rounds):.2f}x | {min(rounds):.2f}-{max(rounds):.2f}x |"
        )
