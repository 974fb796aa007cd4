# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Several handlers acting on the exception that stops an engine, in the order they were attached.

Ignite hands the exception to the ``EXCEPTION_RAISED`` handlers and swallows it unless one of them raises it again, so
MONAI's handlers (``CheckpointSaver``, ``StatsHandler``) each re-raise, and only the first one attached ever runs. The
handlers of this package that must act on the exception (:class:`~transfuse_monai.handlers.ResumableCheckpoint`
saves ``checkpoint_last.pt``, :class:`~transfuse_monai.handlers.FinalValidationHandler` validates an interrupted
training) register a hook with :func:`add_exception_hook` instead: one ``EXCEPTION_RAISED`` handler per engine runs
every hook, then re-raises the exception.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from weakref import WeakKeyDictionary

from ignite.engine import Engine, Events

__all__ = ["add_exception_hook"]

ExceptionHook = Callable[[Engine, BaseException], None]
_HOOKS: WeakKeyDictionary[Engine, list[ExceptionHook]] = WeakKeyDictionary()


def add_exception_hook(engine: Engine, hook: ExceptionHook) -> None:
    """Call ``hook(engine, exception)`` when ``engine`` stops on an exception (``KeyboardInterrupt`` included).

    The hooks of an engine run in the order they were added, from one ``EXCEPTION_RAISED`` handler registered with
    the first hook, which then raises the exception again: a hook does not re-raise it. A hook failing with an
    ``Exception`` is logged and the next hook runs; a ``KeyboardInterrupt`` (a second Ctrl-C) or another
    ``BaseException`` in a hook stops the hooks and propagates, chained to the original exception.

    Args:
        engine: the engine (e.g. a trainer).
        hook: called with the engine and the exception.
    """
    hooks = _HOOKS.get(engine)
    if hooks is None:
        hooks = _HOOKS[engine] = []
        engine.add_event_handler(Events.EXCEPTION_RAISED, _run_hooks)
    hooks.append(hook)


def _run_hooks(engine: Engine, e: BaseException) -> None:
    for hook in list(_HOOKS.get(engine, ())):
        try:
            hook(engine, e)
        except Exception:  # noqa: BLE001 -- the original exception is the one to raise
            name = getattr(hook, "__qualname__", repr(hook))
            logging.getLogger(__name__).exception(f"{name} failed while handling {type(e).__name__}: {e}")
    raise e
