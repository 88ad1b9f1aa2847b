"""A Python client of the service (httpx), the same calls `lmedit jobs` makes.

    from editor.service.client import Client
    c = Client("http://127.0.0.1:8321", token)
    job = c.submit(recipe="gender-debias", set={"seed": 1})
    for event in c.events(job):          # Server-Sent Events until the job ends
        print(event)
    c.download(job, "checkpoint/model.safetensors", "model.safetensors")
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import httpx

from editor.errors import UserError

DEFAULT_SERVER = "http://127.0.0.1:8321"


def default_token() -> str | None:
    """$LMEDIT_TOKEN, else the token a local service without --tokens made (``<home>/service/token``)."""
    if os.environ.get("LMEDIT_TOKEN"):
        return os.environ["LMEDIT_TOKEN"]
    from editor.model.store import home

    path = home() / "service" / "token"
    return path.read_text().strip() if path.is_file() else None


class Client:
    def __init__(self, server: str | None = None, token: str | None = None, timeout: float = 30.0):
        self.server = (server or os.environ.get("LMEDIT_SERVER") or DEFAULT_SERVER).rstrip("/")
        token = token or default_token()
        if not token:
            raise UserError("no token: pass --token, set LMEDIT_TOKEN, or start `lmedit serve` on this machine")
        self.http = httpx.Client(base_url=self.server, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise UserError(f"cannot reach the service at {self.server}: {exc}") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text[:200]
            raise UserError(f"{response.status_code}: {detail}")
        return response

    def submit(self, recipe: str | None = None, set: dict | None = None, command: str | None = None,
               options: dict | None = None, resources: dict | None = None) -> str:
        body: dict = {"recipe": recipe, "set": set or {}} if recipe is not None else {"command": command,
                                                                                     "options": options or {}}
        if resources:
            body["resources"] = resources
        return self._call("POST", "/v1/jobs", json=body).json()["id"]

    def jobs(self) -> list[dict]:
        return self._call("GET", "/v1/jobs").json()["jobs"]

    def status(self, job: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job}").json()

    def cancel(self, job: str) -> dict:
        return self._call("DELETE", f"/v1/jobs/{job}").json()

    def artifacts(self, job: str) -> list[dict]:
        return self._call("GET", f"/v1/jobs/{job}/artifacts").json()["artifacts"]

    def history(self, job: str) -> list[dict]:
        """The events so far, without waiting."""
        return self._call("GET", f"/v1/jobs/{job}/events", params={"follow": "false"}).json()["events"]

    def events(self, job: str, after: int = 0) -> Iterator[dict]:
        """Every event from ``after`` on, as it happens, until the job has ended."""
        headers = {"Last-Event-ID": str(after)} if after else {}
        try:
            with self.http.stream("GET", f"/v1/jobs/{job}/events", headers=headers, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise UserError(f"{response.status_code}: {response.json().get('detail')}")
                event: dict = {}
                for line in response.iter_lines():
                    if not line:
                        if event:
                            yield event
                        event = {}
                    elif line.startswith("id: "):
                        event["seq"] = int(line[4:])
                    elif line.startswith("event: "):
                        event["type"] = line[7:]
                    elif line.startswith("data: "):
                        event["data"] = json.loads(line[6:])
        except httpx.HTTPError as exc:
            raise UserError(f"lost the service at {self.server}: {exc}") from None

    def download(self, job: str, path: str, dest: str | Path) -> Path:
        """One artifact to ``dest`` (written whole or not at all)."""
        from editor.io import atomic_file

        dest = Path(dest)
        with atomic_file(dest) as tmp, open(tmp, "wb") as f:
            with self.http.stream("GET", f"/v1/jobs/{job}/artifacts/{path}") as response:
                if response.status_code >= 400:
                    response.read()
                    raise UserError(f"{response.status_code}: {response.json().get('detail')}")
                for chunk in response.iter_bytes():
                    f.write(chunk)
        return dest
