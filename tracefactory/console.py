"""Where our own output goes. `tracefactory run` sends everything written to file descriptors 1 and 2
(this process, its threads and its children: vLLM's engine processes, compilers, Prefect's temporary
server) to a log file, and keeps the terminal for our own progress bars, stage lines and funnel,
written through `out()` and `err()`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator, TextIO

from tracefactory.redact import install_log_redaction

_terminal: dict[str, TextIO] = {}  # "out" / "err": the real terminal while `quiet` holds fds 1 and 2
OUR_LOGGERS = ("tracefactory", "flows")


def out() -> TextIO:
    """Our standard output (tables, results)."""
    return _terminal.get("out", sys.stdout)


def err() -> TextIO:
    """Our diagnostics (progress bars, stage lines)."""
    return _terminal.get("err", sys.stderr)


@contextlib.contextmanager
def quiet(log_path: Path) -> Iterator[Path]:
    """Redirect fds 1 and 2 to `log_path` (appending) for the duration; `out()`/`err()` keep the
    terminal. Child processes started meanwhile inherit the log file as their stdout and stderr."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {"out": os.dup(1), "err": os.dup(2)}
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    streams = {
        k: os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace") for k, fd in saved.items()
    }
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    _terminal.update(streams)
    try:
        yield log_path
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for s in streams.values():
            s.flush()
        os.dup2(saved["out"], 1)
        os.dup2(saved["err"], 2)
        _terminal.clear()
        for k, s in streams.items():
            s.close()
            os.close(saved[k])


class _Ours(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] in OUR_LOGGERS


def setup_logging(verbose: bool) -> None:
    """Everything at INFO to the root handler (the terminal when verbose, else the log file); in quiet
    mode our own INFO lines also go to the terminal, briefly formatted."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Prefect's API calls, one line each
    if not verbose:
        term = logging.StreamHandler(_TerminalStream())
        term.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        term.addFilter(_Ours())
        logging.getLogger().addHandler(term)
    install_log_redaction(*logging.getLogger().handlers)  # no URL credentials in any line we write


class _TerminalStream:
    """A file-like that writes to whatever `err()` is at the time of writing."""

    def write(self, text: str) -> int:
        return err().write(text)

    def flush(self) -> None:
        err().flush()
