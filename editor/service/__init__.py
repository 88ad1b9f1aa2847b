"""The job service: ``lmedit serve`` (FastAPI app, SQLite job store, worker processes or Ray tasks)
and its client (``lmedit jobs``, :class:`editor.service.client.Client`). Optional dependencies: the
``service`` extra (and ``ray`` for the Ray executor)."""
