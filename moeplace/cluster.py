"""Past one machine: the layers of a plan, and the shards of a statistics merge, on a Dask cluster.

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
import os
from collections.abc import Iterator
from concurrent.futures import Executor

from moeplace.errors import MoeplaceError
from moeplace.planner.plan import layer_executor

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
