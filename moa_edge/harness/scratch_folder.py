"""Temporary folders that a signal cannot leave behind.

Ctrl-C, SIGTERM and SIGHUP raise in the main thread (cli.py), at whatever line runs then. A
signal between mkdtemp and the line that records its name, or in the middle of the rmtree
that removes it, would leave the folder in $TMPDIR; so both happen with those signals held
back, and a signal that came meanwhile goes to its handler right after.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
import shutil
import signal
import tempfile
import threading
from typing import Iterator

HELD = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """The block runs whole; a signal that arrives during it goes to its handler when it ends.
    (Blocking with pthread_sigmask would not do: the signal then goes to one of torch's or
    onnxruntime's threads, and Python still runs the handler in the main thread at once.)"""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be changed, and only ever run, in the main thread
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in HELD}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(caught[0])


@contextlib.contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A fresh folder in $TMPDIR for the block, removed after it however the block ends."""
    folder = None
    try:
        with signals_held():
            folder = Path(tempfile.mkdtemp(prefix=prefix))
        yield folder
    finally:
        if folder is not None:
            with signals_held():
                shutil.rmtree(folder, ignore_errors=True)
