"""`ptolemy-rt batch --dask`: the same per-image tasks on an existing Dask distributed cluster (optional extra)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from distributed import Client, WorkerPlugin, as_completed

from .batch import BatchConfig, Done, UsageError, _process, init_worker
from .sessions import Item

__all__ = ["ModelPlugin", "dask_results"]


class ModelPlugin(WorkerPlugin):
    """Loads the model set once per worker when it joins, so no task pays for it."""

    name = "ptolemy-rt-models"

    def __init__(self, config: BatchConfig):
        self.config = config

    def setup(self, worker) -> None:
        """Called by each worker (and by workers that join later)."""
        init_worker(self.config, ignore_sigint=False, shared=True)


def dask_results(items: list[Item], config: BatchConfig, address: str,
                 failed: Callable[[Item, BaseException], Done]) -> Iterator[Done]:
    """Submit one task per image to the scheduler at `address`; yield (row, files, marks) as tasks finish."""
    try:
        client = Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise UsageError(f"--dask {address}: cannot reach the scheduler ({exc})") from None
    try:
        client.register_plugin(ModelPlugin(config))
        futures = {client.submit(_process, item, config, pure=False): item for item in items}
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as exc:  # noqa: BLE001 - a worker died or the task could not be unpickled there
                yield failed(futures[future], exc)
            future.release()
    finally:
        client.close()
