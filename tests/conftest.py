"""Shared pytest fixtures."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
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


def pytest_sessionstart(session):
    """Point ``TMPDIR`` (and :mod:`tempfile`) of the test process, and so of every process it starts, at a folder of
    pytest's own temporary tree: MONAI Label's server writes its results with :mod:`tempfile` and
    ``torch.distributed.run`` its rendezvous folders there, which would otherwise pile up in the system's ``/tmp``.
    Created before the first module, it is outside every module's clean-up below; pytest prunes it with its session
    folder."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    tmp = factory.mktemp("tmpdir", numbered=False)
    _module_state["tmpdir_before"] = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = tempfile.tempdir = str(tmp)


def pytest_sessionfinish(session):
    if "tmpdir_before" not in _module_state:
        return
    before = _module_state.pop("tmpdir_before")
    if before is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = before
    tempfile.tempdir = None


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


# -- torchrun ------------------------------------------------------------------------------------------------------
class Torchrun:
    """Launch ``python -m torch.distributed.run ... -m monai.bundle run ...`` from the repository root, over
    127.0.0.1 only (the rendezvous on a free local port, gloo's sockets on the loopback interface), one thread per
    process, bounded in time.

    Args:
        timeout: seconds all the launches of one call may take together; on expiry, or as soon as one launch fails,
            every launch still running is killed with its workers.
    """

    def __init__(self, timeout: float = 600) -> None:
        self.timeout = timeout
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}

    @staticmethod
    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    @staticmethod
    def command(
        bundle_args: Sequence[str], port: int, nproc_per_node: int = 2, nnodes: int = 1, node_rank: int = 0
    ) -> list[str]:
        return [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--node_rank", str(node_rank),
            "--nproc_per_node", str(nproc_per_node), "--master_addr", "127.0.0.1", "--master_port", str(port),
            "-m", "monai.bundle", "run", *map(str, bundle_args),
        ]  # fmt: skip

    def run(self, *bundle_args: str, nproc_per_node: int = 2) -> str:
        """One node of ``nproc_per_node`` processes; returns its output (stdout and stderr)."""
        return self.run_nodes([bundle_args], nproc_per_node=nproc_per_node)[0]

    def run_nodes(self, nodes: Sequence[Sequence[str]], nproc_per_node: int = 1) -> list[str]:
        """One ``torchrun`` launch per node (``--nnodes len(nodes) --node_rank i``, node ``i`` with the bundle
        arguments ``nodes[i]``), all at once on one port; returns each node's output. Fails the test, with every
        node's output, when a launch fails or the timeout expires."""
        port = self.free_port()
        logs = [tempfile.TemporaryFile(mode="w+") for _ in nodes]
        procs = [
            subprocess.Popen(
                self.command(args, port, nproc_per_node, len(nodes), rank), cwd=REPO, env=self.env, stdout=log,
                stderr=subprocess.STDOUT, text=True, start_new_session=True,
            )
            for rank, (args, log) in enumerate(zip(nodes, logs))
        ]  # fmt: skip
        deadline = time.monotonic() + self.timeout
        try:
            while any(p.poll() is None for p in procs):
                failed = any(p.returncode not in (None, 0) for p in procs)
                if failed or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)  # the launcher's session: the agent and its workers
                    p.wait()
            outputs = []
            for log in logs:
                log.seek(0)
                outputs.append(log.read())
                log.close()
        if any(p.returncode != 0 for p in procs):
            report = "\n".join(
                f"--- node {i} (exit status {proc.returncode}):\n{out[-6000:]}"
                for i, (proc, out) in enumerate(zip(procs, outputs))
            )
            pytest.fail(f"torchrun failed or timed out after {self.timeout} s:\n{report}")
        return outputs


@pytest.fixture()
def torchrun() -> Torchrun:
    """Runs bundles with ``torchrun`` on this machine (see :class:`Torchrun`)."""
    return Torchrun()
