"""Shared pytest fixtures."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def torch_threads(n: int):
    """Run with ``n`` intra-op threads, restoring the previous count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture()
def single_thread():
    """Tiny CPU models run much faster without intra-op thread contention."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def deploy_python() -> Path:
    """The isolated MONAI Deploy environment's interpreter (``bash deploy/setup_env.sh``; ``$DEPLOY_VENV``, default
    ``.deploy-venv``): the SDK installs itself inside the ``monai`` package, so the test process never imports it.
    Skips without it, except under CI (``CI=true``), where it fails."""
    venv = Path(os.environ.get("DEPLOY_VENV") or REPO / ".deploy-venv")
    python = venv / "bin" / "python"
    if not os.access(python, os.X_OK):
        msg = f"MONAI Deploy environment not found at {venv} (DEPLOY_VENV): create it with `bash deploy/setup_env.sh`"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return python


@pytest.fixture()
def two_threads():
    """Both cores of the CI machine, for the few tests that train a network for real."""
    with torch_threads(2):
        yield


# -- disk hygiene -------------------------------------------------------------------------------------------------
# Module-scoped fixtures keep datasets, trained checkpoints and exports in ``tmp_path_factory`` folders, which pytest
# only removes at the end of the session; the whole suite would hold several GB at once. Remove a module's folders as
# soon as its last test is done, unless one of its tests failed (then they stay for inspection).
_module_state: dict = {"module": None, "before": set(), "failed": False}


def _temp_children(config) -> set:
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is None:
        return set()
    base = factory.getbasetemp()
    return set(base.iterdir()) if base.is_dir() else set()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if item.module is not _module_state["module"]:
        _module_state.update(module=item.module, before=_temp_children(item.config), failed=False)


def pytest_runtest_logreport(report):
    if report.failed:
        _module_state["failed"] = True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield  # module-scoped fixtures are finalised inside this hook when the next test is in another module
    if nextitem is not None and nextitem.module is item.module:
        return
    if _module_state["failed"]:
        return
    import shutil

    for path in _temp_children(item.config) - _module_state["before"]:
        shutil.rmtree(path, ignore_errors=True)
