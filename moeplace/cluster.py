"""Where a plan's layers and a merge's shards run: a process pool on this machine
(``layer_executor``), or, past one machine, a Dask cluster (``cluster_executor``); ``executor_for``
picks one.

Planning is independent per layer and statistics are exact sums over shards, so a cluster needs
no new algorithm: the work moeplace would hand to its own process pool goes to the cluster's
workers through Dask's ``concurrent.futures`` executor, and the results come back in the same
order, so the files are the same bytes as on one machine. Dask (``pip install 'moeplace[cluster]'``)
is imported only here, only when asked for.

``address``: ``local`` starts a cluster of worker processes on this machine for the run (and
stops it after); anything else is a running scheduler's address (``tcp://host:8786``), whose
workers must be able to read the input paths (a shared filesystem) for ``merge``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import os
import signal
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor

from moeplace.errors import MoeplaceError

LOCAL = "local"


@contextlib.contextmanager
def cluster_executor(address: str, workers: int | None = None) -> Iterator[Executor]:
    """An executor whose tasks run on the Dask cluster at ``address`` (``LOCAL``: ``workers``
    processes on this machine, all cores by default, for this run only)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise MoeplaceError(
            "the cluster backend needs Dask: pip install 'moeplace[cluster]'"
        ) from None  # fmt: skip
    with contextlib.ExitStack() as stack:
        if address == LOCAL:
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers or os.cpu_count() or 1,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",
                )
            )
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(address, timeout="10s"))
            except (OSError, TimeoutError, ValueError) as exc:
                raise MoeplaceError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        with client.get_executor(pure=False) as executor:
            yield executor


@contextlib.contextmanager
def executor_for(jobs: int, cluster: str | None) -> Iterator[Executor | None]:
    """Where layers run: a Dask cluster (``cluster``), else ``jobs`` local processes (None: this one)."""
    if cluster is None:
        with layer_executor(jobs) as pool:
            yield pool
    else:
        with cluster_executor(cluster) as pool:
            yield pool


@contextlib.contextmanager
def layer_executor(jobs: int) -> Iterator[Executor | None]:
    """A process pool of ``jobs`` workers for ``plan`` (None for 1 job: solve in this process).

    Workers start from a fork server, never from this process: forking a process that has run
    CP-SAT's threads is unsafe.
    """
    if jobs <= 1:
        yield None
        return
    context = multiprocessing.get_context("forkserver")
    # start the fork server now, ignoring Ctrl-C: it and the workers it forks inherit that, so an
    # interrupt sent to the whole terminal group reaches only this process, which stops them
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)
    executor = ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, initializer=_leave_interrupts_to_parent
    )
    try:
        yield executor
    except BaseException:  # an error or an interrupt: stop the workers now, not after their layers
        workers = list(getattr(executor, "_processes", {}).values())
        manager = getattr(executor, "_executor_manager_thread", None)  # shutdown forgets it
        executor.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join(timeout=2)
            if worker.is_alive():
                worker.kill()
        # let the pool's manager thread see its workers gone and close its wake-up pipe before
        # exit: Python 3.11's exit hook writes to that pipe unlocked, and a close racing it
        # prints a traceback after the one error line
        if manager is not None:
            manager.join(timeout=10)
        raise
    executor.shutdown(wait=True)


def _leave_interrupts_to_parent() -> None:
    """Workers ignore Ctrl-C (the terminal sends it to the whole group); the parent stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
