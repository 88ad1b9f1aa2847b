"""Work spread over a Ray cluster: actors that load a model once and run shards of one job.

lmedit's attribution scores are means over prompts and its ablation scans are independent per head,
so a job splits into shards whose results merge exactly (the merging is the caller's: see
editor/attribution/sharded.py). This module knows nothing of scores: it runs ``module:function``
on each shard, inside an actor that keeps the models it loaded, and returns the results in shard
order.

Why Ray: scheduling, cluster membership, object transfer and actor restarts are what Ray is for;
our part is only which work goes where. A worker process that dies (killed, out of memory, node
lost) costs its shard one retry on a fresh actor; a second death is a one-line error naming the
shard. An exception raised by the work itself is not retried (it would fail again): a
``UserError`` keeps its message, anything else is reported with its type.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

from editor.errors import UserError
from editor.faults import crash_point

RETRIES = 1  # a shard whose worker died runs once more, on a new actor


@dataclass(frozen=True)
class ModelSpec:
    """How every worker loads a model (the same options as the command line's)."""

    device: str = "cpu"
    dtype: str = "auto"
    trust_remote_code: bool = False
    threads: int = 1  # torch threads per worker
    max_memory: str | None = None  # with device auto: accelerate's limits, the rest offloaded


def check_ray() -> None:
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise UserError("--executor ray needs the ray package (pip install 'lmedit[ray]')")


class _Worker:
    """One Ray actor: loads each model it is asked for once, then runs shards against them."""

    def __init__(self, spec: ModelSpec):
        import torch

        torch.set_num_threads(spec.threads)
        self.spec = spec
        self.models: dict[str, object] = {}

    def model(self, name: str):
        if name not in self.models:
            from editor.model.loading import load_model

            self.models[name] = load_model(name, device=self.spec.device, dtype=self.spec.dtype,
                                           trust_remote_code=self.spec.trust_remote_code,
                                           max_memory=self.spec.max_memory)
        return self.models[name]

    def run(self, target: str, kwargs: dict):
        crash_point("ray.shard")  # the crash tests kill a worker here
        module, _, name = target.partition(":")
        fn = getattr(importlib.import_module(module), name)
        return fn(self.model, **kwargs)

    def pid(self) -> int:
        return os.getpid()


class RayPool:
    """``workers`` actors on the Ray instance at ``address`` (None: start a local one).

    ``run_shards(target, shards)`` calls ``target(model, **shard)`` for every shard, where
    ``model(name)`` returns that worker's loaded copy; results come back in shard order."""

    def __init__(self, workers: int, address: str | None = None, spec: ModelSpec = ModelSpec(),
                 log: Callable[[str], None] | None = None):
        check_ray()
        import ray

        if workers < 1:
            raise UserError(f"--workers must be at least 1, got {workers}")
        if not ray.is_initialized():
            if address and address != "auto":
                _reachable(address)
            try:
                ray.init(address=address, log_to_driver=False, ignore_reinit_error=True, include_dashboard=False,
                         configure_logging=False)
            except ConnectionError as exc:
                raise UserError(f"cannot reach the Ray cluster at {address}: {exc}") from None
        self.ray = ray
        self.spec = spec
        self.log = log or (lambda _msg: None)
        self._actor_class = ray.remote(num_cpus=spec.threads, max_restarts=0)(_Worker)
        self.actors = [self._new_actor() for _ in range(workers)]

    def _new_actor(self):
        # Workers see this process's LMEDIT_* settings (the store, fault points), wherever they run.
        env = {k: v for k, v in os.environ.items() if k.startswith("LMEDIT_")}
        return self._actor_class.options(runtime_env={"env_vars": env} if env else None).remote(self.spec)

    def run_shards(self, target: str, shards: list[dict], desc: str = "shards",
                   progress: Callable[[int], None] | None = None) -> list:
        """Every shard's result, in order; each shard's ``weight`` (popped; default 1) goes to
        ``progress`` when it finishes, so a bar over prompts aggregates all workers."""
        ray = self.ray
        weights = [s.pop("weight", 1) for s in shards]
        results: dict[int, object] = {}
        tries = {i: 0 for i in range(len(shards))}
        queue = list(range(len(shards)))
        running: dict[object, tuple[int, int]] = {}  # ref -> (shard, actor index)
        idle = list(range(len(self.actors)))
        while queue or running:
            while queue and idle:
                i, a = queue.pop(0), idle.pop(0)
                running[self.actors[a].run.remote(target, shards[i])] = (i, a)
            done, _ = ray.wait(list(running), num_returns=1)
            ref = done[0]
            i, a = running.pop(ref)
            try:
                results[i] = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # the work itself raised: do not retry
                raise _task_error(exc, i, desc) from None
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.ObjectLostError) as exc:
                tries[i] += 1
                if tries[i] > RETRIES:
                    raise UserError(f"{desc}: shard {i + 1} of {len(shards)} failed twice (its Ray worker died: "
                                    f"{type(exc).__name__}); see the Ray logs of that node") from None
                self.log(f"{desc}: the worker of shard {i + 1} died; retrying it on a new worker")
                self.actors[a] = self._new_actor()
                queue.insert(0, i)
            else:
                if progress:
                    progress(weights[i])
            idle.append(a)
        return [results[i] for i in range(len(shards))]

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []

    def __enter__(self) -> "RayPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, in one line, when nothing listens at ``address`` (HOST:PORT or
    ray://HOST:PORT): Ray itself retries for minutes before giving up."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray-address {address!r}: write HOST:PORT, e.g. 10.0.0.5:6379")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def _task_error(exc, shard: int, desc: str) -> Exception:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, UserError):
        return UserError(str(cause))
    return UserError(f"{desc}: shard {shard + 1} raised {type(cause or exc).__name__}: "
                     f"{str(cause or exc).strip().splitlines()[-1] if str(cause or exc).strip() else ''}")
