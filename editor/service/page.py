"""The service's web page at ``/``: server-rendered HTML, no build step, no script needed.

A browser cannot send a bearer header, so ``/?token=T`` (or the form) stores the token in an
HttpOnly, SameSite=Strict cookie and redirects to ``/``; every other request then carries it. The
page lists the user's jobs (state, progress, step, links to the report and the artifacts) and has a
form to submit a packaged recipe with overrides, one ``key=value`` per line.
"""

from __future__ import annotations

import html
import time

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


def _login(message: str = "") -> HTMLResponse:
    note = f"<p class='failed'>{html.escape(message)}</p>" if message else ""
    return _page("lmedit", f"{note}<form method='get' action='/'><label>token <input name='token' type='password'>"
                           "</label> <button>sign in</button></form>")


def _rows(jobs: list[dict]) -> str:
    rows = []
    for j in jobs:
        spec = j["spec"]
        what = spec.get("recipe") if spec["kind"] == "recipe" else spec.get("command")
        link = f"/v1/jobs/{j['id']}"
        report = f" <a href='{link}/artifacts/report.html'>report</a>" if j["state"] == "succeeded" else ""
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(j["created"]))
        rows.append(
            f"<tr data-job='{html.escape(j['id'])}' data-state='{j['state']}'><td>{html.escape(j['id'])}</td>"
            f"<td>{html.escape(str(what))}</td><td class='{j['state']}'>{j['state']}</td>"
            f"<td><progress max='1' value='{j['progress']}'></progress> {j['steps_done']}/{j['steps_total'] or '?'}</td>"
            f"<td>{html.escape(j['step'] or '')}</td><td>{created}</td>"
            f"<td>{html.escape(j['error'] or '')}</td>"
            f"<td><a href='{link}'>status</a> <a href='{link}/artifacts'>artifacts</a>{report}</td></tr>")
    head = "".join(f"<th>{c}</th>" for c in ("job", "what", "state", "progress", "step", "created", "error", "links"))
    return f"<table id='jobs'><tr>{head}</tr>{''.join(rows)}</table>"


def add_page(app: FastAPI, store, user, settings) -> None:

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request, token: str | None = None):
        if token is not None:  # sign in: keep the token in a cookie, drop it from the address bar
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response
        try:
            who = user(request)
        except HTTPException:
            return _login("sign in with your token" if request.cookies.get(COOKIE) is None else "wrong token")
        from editor.recipes.library import packaged

        options = "".join(f"<option>{html.escape(n)}</option>" for n in sorted(packaged()))
        form = ("<h2>Submit a recipe</h2><form method='post' action='/ui/jobs'>"
                f"<label>recipe <select name='recipe'>{options}</select></label><br>"
                "<label>overrides, one key=value per line<br><textarea name='overrides'></textarea></label><br>"
                "<button>submit</button></form>")
        jobs = [j.public() for j in store.list(who)]
        return _page(f"lmedit: jobs of {who}", f"<p>{len(jobs)} jobs. <a href='/'>refresh</a></p>{_rows(jobs)}{form}")

    @app.post("/ui/jobs", include_in_schema=False)
    async def submit_form(request: Request):
        """The page's form (urlencoded; parsed here rather than through python-multipart)."""
        from urllib.parse import parse_qs

        from editor.service.jobs import validate

        who = user(request)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        recipe, overrides = form.get("recipe", [""])[0], form.get("overrides", [""])[0]
        values = {}
        for line in overrides.splitlines():
            if line.strip():
                key, sep, value = line.partition("=")
                values[key.strip()] = value.strip() if sep else ""
        try:
            spec = validate({"recipe": recipe, "set": values})
        except UserError as exc:
            return _page("lmedit: not submitted", f"<p class='failed'>{html.escape(str(exc))}</p><a href='/'>back</a>")
        job_id, why = store.create(who, spec, settings.max_queued, settings.max_queued_per_user)
        if job_id is None:
            return _page("lmedit: not submitted", "<p class='failed'>the queue is full; try again later</p>")
        return RedirectResponse("/", status_code=303)
