"""Process lifecycle: SIGTERM ends a command like Ctrl-C, and servers a command starts die with it.

A scheduler, a worker or Kubernetes stops a process with SIGTERM and kills it a few seconds
later. Python's default for SIGTERM skips every `finally`, and a library may swallow it; so
each command turns SIGTERM into `Terminated` (a KeyboardInterrupt), which unwinds the stack
through the code that marks runs cancelled and stops child servers.

Child servers (Prefect's API, the UIs) are started with the kernel's parent-death signal on
Linux: if the command is killed with -9, they get SIGTERM instead of living on as orphans.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Iterator, Mapping, Sequence


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwind like Ctrl-C, and end as 'cancelled'."""


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001 (signal handler signature)
    # A second SIGTERM while cleaning up ends at once: the caller has waited long enough.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(128 + signal.SIGTERM))
    raise Terminated("SIGTERM")


def handle_sigterm() -> None:
    """From now on SIGTERM raises `Terminated` in the main thread."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def cancel_reason(exc: BaseException) -> str:
    return "SIGTERM" if isinstance(exc, Terminated) or type(exc).__name__ == "TerminationSignal" else "Ctrl-C"


def exit_code(exc: BaseException) -> int:
    return 128 + (signal.SIGTERM if cancel_reason(exc) == "SIGTERM" else signal.SIGINT)


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: get SIGTERM when the parent dies (Linux prctl)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def spawn(argv: Sequence[str], env: Mapping[str, str] | None = None, quiet: bool = False) -> subprocess.Popen:
    """Start a child process that dies with this one; secrets go in `env`, never in `argv`."""
    parent = os.getpid()
    out = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(list(argv), env=dict(env) if env is not None else None, stdout=out, stderr=out,
                            preexec_fn=(lambda: _die_with_parent(parent)) if sys.platform == "linux" else None)


def stop(procs: Sequence[subprocess.Popen], grace_s: float = 5.0) -> None:
    """SIGTERM each child, then SIGKILL whatever is still there after `grace_s`."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextlib.contextmanager
def children(*procs: subprocess.Popen) -> Iterator[list[subprocess.Popen]]:
    """Stop the children however the block ends (error, Ctrl-C, SIGTERM)."""
    running = list(procs)
    try:
        yield running
    finally:
        stop(running)


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    """Until `url` answers 200; raises if the child exits first or the time runs out."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server process exited with code {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:g} s")
