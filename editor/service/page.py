"""The service's web page at ``/``: server-rendered HTML, no build step, no script needed.

A browser cannot send a bearer header, so ``/?token=T`` (or the form) stores the token in an
HttpOnly, SameSite=Strict cookie and redirects to ``/``; every other request then carries it (the
cookie's SameSite rule keeps other sites from posting the page's forms). The page lists the user's
jobs (state, progress with what the step is doing, the artifacts the job reported, the report where
one exists, a cancel button while the job is queued or running) and has a form to submit a packaged
recipe with overrides, one ``key=value`` per line. ``/docs`` is the API reference, rendered here from
the OpenAPI schema (no script or stylesheet from a CDN: it works offline).
"""

from __future__ import annotations

import html
import time
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from editor.errors import UserError

COOKIE = "lmedit_token"  # set by the sign-in form, read by the app on every request (editor/service/app.py)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
progress { width: 8em; }
.failed { color: #a00; } .succeeded { color: #070; }
textarea { width: 30em; height: 5em; }
"""


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


def _login(message: str, token_file: str | None) -> HTMLResponse:
    note = f"<p class='failed'>{html.escape(message)}</p>" if message else ""
    where = (f"<p>Your token: on this machine, the file <code>{html.escape(token_file)}</code> (made by "
             "<code>lmedit serve</code>); otherwise ask whoever runs the service.</p>" if token_file else
             "<p>Your token is the one your service administrator gave you (the --tokens file's line for you).</p>")
    return _page("lmedit", f"{note}<form method='get' action='/'><label>token <input name='token' type='password'>"
                           f"</label> <button>sign in</button></form>{where}")


def _links(j: dict, artifacts: list[dict]) -> str:
    """Status, the artifacts the job reported (files link to themselves; a checkpoint folder to the
    listing), and the report only where the job wrote one."""
    link = f"/v1/jobs/{html.escape(j['id'])}"
    out = [f"<a href='{link}'>status</a>", f"<a href='{link}/artifacts'>artifacts</a>"]
    seen = set()
    for a in artifacts:
        path = a.get("path")
        if not path or path in seen:
            continue
        seen.add(path)
        name = "report" if a.get("kind") == "report" else path
        target = f"{link}/artifacts/{quote(path)}" if a.get("kind") != "checkpoint" else f"{link}/artifacts"
        out.append(f"<a class='artifact' data-kind='{html.escape(str(a.get('kind')))}' href='{target}'>"
                   f"{html.escape(name)}</a>")
    if j["state"] in ("queued", "running"):
        out.append(f"<form class='cancel' method='post' action='/ui/jobs/{html.escape(j['id'])}/cancel'>"
                   "<button>cancel</button></form>")
    return " ".join(out)


def _rows(jobs: list[dict], artifacts: dict[str, list[dict]]) -> str:
    rows = []
    for j in jobs:
        spec = j["spec"]
        what = spec.get("recipe") if spec["kind"] == "recipe" else spec.get("command")
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(j["created"]))
        activity = j.get("activity") if j["state"] == "running" else None
        rows.append(
            f"<tr data-job='{html.escape(j['id'])}' data-state='{j['state']}'><td>{html.escape(j['id'])}</td>"
            f"<td>{html.escape(str(what))}</td><td class='{j['state']}'>{j['state']}</td>"
            f"<td><progress max='1' value='{j['progress']}'></progress> {j['steps_done']}/{j['steps_total'] or '?'}"
            + (f"<br><span class='activity'>{html.escape(activity)}</span>" if activity else "") + "</td>"
            f"<td>{html.escape(j['step'] or '')}</td><td>{created}</td>"
            f"<td>{html.escape(j['error'] or '')}</td>"
            f"<td>{_links(j, artifacts.get(j['id'], []))}</td></tr>")
    head = "".join(f"<th>{c}</th>" for c in ("job", "what", "state", "progress", "step", "created", "error", "links"))
    return f"<table id='jobs'><tr>{head}</tr>{''.join(rows)}</table>"


def _api_docs(schema: dict) -> HTMLResponse:
    """The OpenAPI schema as one static page: each path, its methods, summary and parameters."""
    parts = [f"<p>{html.escape(schema.get('info', {}).get('description', ''))} Every request but "
             "<code>/healthz</code> carries <code>Authorization: Bearer TOKEN</code>. The machine-readable "
             "schema: <a href='/openapi.json'>/openapi.json</a>.</p>"]
    for path, methods in sorted(schema.get("paths", {}).items()):
        for method, op in methods.items():
            params = ", ".join(f"{p['name']} ({p.get('in')})" for p in op.get("parameters", []))
            parts.append(f"<h3><code>{method.upper()} {html.escape(path)}</code></h3>"
                         f"<p>{html.escape(op.get('summary', ''))}</p>"
                         + (f"<pre>{html.escape(op['description'])}</pre>" if op.get("description") else "")
                         + (f"<p>parameters: {html.escape(params)}</p>" if params else ""))
    return _page("lmedit API", "".join(parts))


def add_page(app: FastAPI, store, user, settings, token_file: str | None = None) -> None:

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def api_docs():
        return _api_docs(app.openapi())

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request, token: str | None = None):
        if token is not None:  # sign in: keep the token in a cookie, drop it from the address bar
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response
        try:
            who = user(request)
        except HTTPException:
            return _login("sign in with your token" if request.cookies.get(COOKIE) is None else "wrong token",
                          token_file)
        from editor.recipes.library import packaged

        options = "".join(f"<option>{html.escape(n)}</option>" for n in sorted(packaged()))
        form = ("<h2>Submit a recipe</h2><form method='post' action='/ui/jobs'>"
                f"<label>recipe <select name='recipe'>{options}</select></label><br>"
                "<label>overrides, one key=value per line<br><textarea name='overrides'></textarea></label><br>"
                "<button>submit</button></form>")
        jobs = [j.public() for j in store.list(who)]
        artifacts = {j["id"]: [e["data"] for e in store.events(j["id"]) if e["type"] == "artifact"] for j in jobs}
        return _page(f"lmedit: jobs of {who}", f"<p>{len(jobs)} jobs. <a href='/'>refresh</a> "
                                               f"<a href='/docs'>API</a></p>{_rows(jobs, artifacts)}{form}")

    @app.post("/ui/jobs/{job_id}/cancel", include_in_schema=False)
    def cancel_form(job_id: str, request: Request):
        """The page's cancel button: the same cancel as ``DELETE /v1/jobs/{id}``, then back to the list."""
        if store.cancel(job_id, user(request)) is None:
            raise HTTPException(404, f"no job {job_id}")
        return RedirectResponse("/", status_code=303)

    @app.post("/ui/jobs", include_in_schema=False)
    async def submit_form(request: Request):
        """The page's form (urlencoded; parsed here rather than through python-multipart)."""
        from urllib.parse import parse_qs

        from editor.service.jobs import validate
        from editor.settings import split_assignment

        who = user(request)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        recipe, overrides = form.get("recipe", [""])[0], form.get("overrides", [""])[0]
        try:
            # text values, parsed by the request's own rules (as `--set` on the command line)
            values = dict(split_assignment(line, what="override line") for line in overrides.splitlines() if line.strip())
            spec = validate({"recipe": recipe, "set": values})
        except UserError as exc:
            return _page("lmedit: not submitted", f"<p class='failed'>{html.escape(str(exc))}</p><a href='/'>back</a>")
        job_id, why = store.create(who, spec, settings.max_queued, settings.max_queued_per_user)
        if job_id is None:
            return _page("lmedit: not submitted", "<p class='failed'>the queue is full; try again later</p>")
        return RedirectResponse("/", status_code=303)
