"""``lmedit serve``: jobs over HTTP (FastAPI on uvicorn; OpenAPI docs at ``/docs``).

FastAPI because it gives request validation, OpenAPI documentation and streaming responses (for
Server-Sent Events) on a well-kept ASGI stack; uvicorn is its standard server. Every request but
``/healthz`` needs a bearer token; users see only their own jobs (another user's job is a 404, as
if it did not exist).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import mimetypes
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from editor.errors import UserError
from editor.service.jobs import validate
from editor.service.page import COOKIE
from editor.service.store import DONE, JobStore


@dataclass
class Settings:
    home: Path
    tokens: dict[str, str] = field(default_factory=dict)  # token -> user
    workers: int = 1
    executor: str = "local"
    ray_address: str | None = None
    max_queued: int = 100
    max_queued_per_user: int = 20
    max_request_bytes: int = 1 << 20
    retry_after: int = 30
    token_file: Path | None = None  # where the local user's token is kept (no --tokens), for the sign-in page


def read_tokens(path: str | Path) -> dict[str, str]:
    """``user token`` per line (# comments, blank lines allowed) -> {token: user}; one-line errors."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"tokens file not found: {path}") from None
    except (OSError, UnicodeDecodeError):
        raise UserError(f"cannot read tokens file {path} as UTF-8 text") from None
    tokens: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise UserError(f"{path}: line {n}: write 'USER TOKEN'")
        user, token = parts
        if len(token) < 16:
            raise UserError(f"{path}: line {n}: the token of {user!r} is shorter than 16 characters")
        if token in tokens:
            raise UserError(f"{path}: line {n}: a token is given twice")
        tokens[token] = user
    if not tokens:
        raise UserError(f"{path}: no 'USER TOKEN' lines")
    return tokens


def local_token(home: Path) -> dict[str, str]:
    """Without --tokens (loopback only): one user, ``local``, whose token is made once and kept in
    ``HOME/token`` (mode 0600) for `lmedit jobs` on the same machine."""
    from editor.io import write_text_atomic

    path = home / "token"
    if path.is_file():
        path.chmod(0o600)  # one an older version left readable
        token = path.read_text().strip()
    else:
        token = secrets.token_urlsafe(24)
        write_text_atomic(path, token + "\n", mode=0o600)  # mkstemp's 0600 from the start: never readable
    return {token: "local"}


def claim_home(home: Path):
    """The service's home, private (0700: it holds the token, the job database and every job's
    results) and held for this process's life: a second service on the same home would run the
    same queued jobs twice, so it is refused in one line naming the first one's pid."""
    from editor.io import DirectoryLock

    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    home.chmod(0o700)
    lock = DirectoryLock(home)
    try:
        return lock.acquire()
    except UserError:
        raise UserError(f"another lmedit service uses {home} ({lock.holder()}); stop it or give another --home") \
            from None


def check_host(host: str, tokens_given: bool) -> None:
    """Refuse to serve beyond this machine without an explicit list of users and tokens."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not tokens_given:
        raise UserError(f"serving on {host} (not loopback) needs --tokens FILE (lines of 'USER TOKEN')")


def create_app(settings: Settings) -> FastAPI:
    from editor.service.runner import LocalExecutor, Scheduler

    settings.home.mkdir(parents=True, exist_ok=True)
    store = JobStore(settings.home / "jobs.sqlite3")
    if settings.executor == "ray":
        from editor.service.ray_executor import RayExecutor

        executor = RayExecutor(settings.ray_address)
    else:
        executor = LocalExecutor()
    scheduler = Scheduler(store, settings.home, executor, workers=settings.workers)

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="lmedit", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Attribution, pruning, debiasing and LoRA comparison jobs on the models of this machine.")
    app.state.store, app.state.scheduler, app.state.settings = store, scheduler, settings

    @app.middleware("http")
    async def limit_size(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_request_bytes):
            return JSONResponse({"detail": f"request larger than {settings.max_request_bytes} bytes"}, status_code=413)
        if length is None and request.headers.get("transfer-encoding"):  # a chunked body has no size to
            return JSONResponse({"detail": "send a Content-Length (chunked bodies are not accepted)"},  # bound
                                status_code=411)
        return await call_next(request)

    def user(request: Request) -> str:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
        for known, name in settings.tokens.items():
            if token and hmac.compare_digest(token.encode(), known.encode()):
                return name
        raise HTTPException(401, "missing or wrong token (Authorization: Bearer TOKEN)",
                            headers={"WWW-Authenticate": "Bearer"})

    def own(job_id: str, who: str):
        job = store.get(job_id, who)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    @app.get("/healthz")
    def healthz():
        return {"ok": True, "running": len(scheduler.running), "executor": executor.name}

    @app.post("/v1/jobs", status_code=202)
    async def submit(request: Request, who: str = Depends(user)):
        body = await request.body()
        if len(body) > settings.max_request_bytes:
            raise HTTPException(413, f"request larger than {settings.max_request_bytes} bytes")
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            raise HTTPException(422, "the request body is not valid JSON") from None
        try:
            spec = await asyncio.to_thread(validate, payload)
        except UserError as exc:
            raise HTTPException(422, str(exc)) from None
        job_id, why = store.create(who, spec, settings.max_queued, settings.max_queued_per_user)
        if job_id is None:
            detail = ("the queue is full" if why == "full"
                      else f"you have {settings.max_queued_per_user} jobs queued already")
            raise HTTPException(429, detail + "; try again later", headers={"Retry-After": str(settings.retry_after)})
        return {"id": job_id, "state": "queued"}

    @app.get("/v1/jobs")
    def list_jobs(who: str = Depends(user)):
        return {"jobs": [j.public() for j in store.list(who)]}

    @app.get("/v1/jobs/{job_id}")
    def status(job_id: str, who: str = Depends(user)):
        return own(job_id, who).public()

    @app.delete("/v1/jobs/{job_id}")
    def cancel(job_id: str, who: str = Depends(user)):
        job = store.cancel(job_id, who)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job.public()

    @app.get("/v1/jobs/{job_id}/events")
    async def events(job_id: str, request: Request, follow: bool = True, who: str = Depends(user)):
        """Server-Sent Events (id, event type, JSON data) until the job has ended; ``follow=false``:
        the events so far as one JSON list. ``Last-Event-ID`` resumes after a reconnect."""
        own(job_id, who)
        last = request.headers.get("last-event-id", "0")
        start = int(last) if last.isdigit() else 0
        if not follow:
            return {"events": [{"seq": e["seq"], "type": e["type"], "data": {**e["data"], "time": e["time"]}}
                               for e in store.events(job_id, start)]}

        async def stream():
            seen = start
            while True:
                batch = await asyncio.to_thread(store.events, job_id, seen)
                for ev in batch:
                    seen = ev["seq"]
                    yield f"id: {ev['seq']}\nevent: {ev['type']}\ndata: {json.dumps({**ev['data'], 'time': ev['time']})}\n\n"
                job = await asyncio.to_thread(store.get, job_id)
                if job is None or (job.state in DONE and not batch):
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.25)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def _run_dir(job_id: str) -> Path:
        return scheduler.job_dir(job_id) / "run"

    @app.get("/v1/jobs/{job_id}/artifacts")
    def artifacts(job_id: str, who: str = Depends(user)):
        own(job_id, who)
        return {"artifacts": list_artifacts(_run_dir(job_id))}

    @app.get("/v1/jobs/{job_id}/artifacts/{path:path}")
    def artifact(job_id: str, path: str, who: str = Depends(user)):
        own(job_id, who)
        root = _run_dir(job_id).resolve()
        file = (root / path).resolve()
        if root not in file.parents or not file.is_file() or _hidden(file.relative_to(root)):
            raise HTTPException(404, f"no artifact {path}")
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        return FileResponse(file, media_type=kind)

    from editor.service.page import add_page

    add_page(app, store, user, settings, str(settings.token_file) if settings.token_file else None)
    return app


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def list_artifacts(root: Path) -> list[dict]:
    """Files a job wrote (hidden lock and temporary files left out), with sizes."""
    if not root.is_dir():
        return []
    return [{"path": str(p.relative_to(root)), "bytes": p.stat().st_size}
            for p in sorted(root.rglob("*")) if p.is_file() and not _hidden(p.relative_to(root))]


def _version() -> str:
    from editor import __version__

    return __version__
