"""What the bridge's feature implementations share: each PyLabRobot machine lives on an asyncio
loop in a thread of its own (PyLabRobot is asynchronous; the `sila2` server calls implementations
from its worker threads), and what a chatterbox backend prints instead of talking to hardware
goes to $LW_PLR_MACHINE_LOG, one line per print. `bridge.py` copies this file into the
generated package next to the implementations.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import threading


class MachineLoop:
    """One machine's event loop; `run` hands it a coroutine and waits for the result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.lock = threading.Lock()

    def run(self, coro, what: str, failed):
        """Runs `coro`; any PyLabRobot error becomes the defined error `failed`, in its words."""
        log = os.environ.get("LW_PLR_MACHINE_LOG")
        with self.lock:
            try:
                if log:
                    with open(log, "a", buffering=1) as out, contextlib.redirect_stdout(out):
                        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()
                return asyncio.run_coroutine_threadsafe(coro, self.loop).result()
            except failed:
                raise
            except Exception as e:  # PyLabRobot's own errors, in its words
                raise failed(f"{what}: {type(e).__name__}: {e}")


def backend(kind: str, env: str, known: dict):
    """The backend `$env` names for a machine of `kind` (chatterbox unless told)."""
    name = os.environ.get(env, "chatterbox")
    if name not in known:
        raise ValueError(f"unknown {kind} backend {name!r}; this bridge knows {', '.join(sorted(known))}")
    return known[name]()
