"""``lmedit serve --executor ray``: each job is a Ray task, so a lab adds machines by adding Ray nodes.

The task runs the same worker command line as the local executor (one ``lmedit`` process per job)
on whichever node Ray schedules it, with the job's ``resources`` (CPUs, GPUs) as the task's Ray
resources. The job's directory is the service home's, so every node must see the service home at
the same path (a shared filesystem, as Ray clusters for ML usually have): the worker writes its log
and run directory there, the service follows the log for progress exactly as for local workers.
Cancelling force-cancels the task; the ``lmedit`` process dies with its Ray worker (PDEATHSIG).
"""

from __future__ import annotations

from pathlib import Path


def _run_worker(argv: list[str], job_dir: str, job_id: str) -> int:
    """Runs inside a Ray worker: the job's lmedit process, as the local executor starts it."""
    from editor.service.runner import spawn_worker

    directory = Path(job_dir)
    if not directory.is_dir():
        raise RuntimeError(f"{job_dir} is not visible on this node: the service home must be on a shared filesystem")
    return spawn_worker(argv, directory, job_id).wait()


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None):
        import ray

        if not ray.is_initialized():
            ray.init(address=address or "auto", log_to_driver=False, ignore_reinit_error=True)
        self.ray = ray
        self._task = ray.remote(max_retries=0)(_run_worker)

    def start(self, job_id: str, argv: list[str], job_dir: Path, resources: dict):
        return self._task.options(num_cpus=resources.get("cpus", 1), num_gpus=resources.get("gpus", 0)).remote(
            argv, str(job_dir), job_id)

    def ident(self, ref) -> str:
        return f"ray:{ref.hex()}"

    def poll(self, ref) -> int | None:
        ready, _ = self.ray.wait([ref], timeout=0)
        if not ready:
            return None
        try:
            return int(self.ray.get(ref))
        except self.ray.exceptions.RayError:  # the Ray worker died or the task was cancelled
            return -9

    def stop(self, ref) -> None:
        self.ray.cancel(ref, force=True)
