"""`lmedit serve` and `lmedit jobs`: the service and its client."""

from __future__ import annotations

import json
from pathlib import Path

import click

from editor.errors import UserError
from editor.io import check_writable_directory
from editor.cli.core import LmeditGroup, main


# service ----------------------------------------------------------------------------------------
@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8321, show_default=True)
@click.option("--home", type=click.Path(file_okay=False, path_type=Path),
              help="Jobs database and run directories [default: the store's home / service].")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True, help="Jobs run at once.")
@click.option("--tokens", type=click.Path(dir_okay=False, path_type=Path),
              help="Lines of 'USER TOKEN'. Without it (loopback only) one user 'local' gets a token in HOME/token.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: a worker process per job; ray: a Ray task per job (--ray-address).")
@click.option("--ray-address", help="Ray cluster to join (e.g. 10.0.0.5:6379) [default: auto].")
@click.option("--max-queued", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="Queued jobs before submissions get 429.")
@click.option("--max-queued-per-user", type=click.IntRange(1, 100_000), default=20, show_default=True)
def serve(host, port, home, workers, tokens, executor, ray_address, max_queued, max_queued_per_user):
    """Run the job service: FastAPI on uvicorn; API under /v1, docs at /docs, a page at /."""
    _need("fastapi", "uvicorn", extra="service")
    from editor.model.store import home as store_home
    from editor.service.app import Settings, check_host, claim_home, local_token, read_tokens

    check_host(host, tokens is not None)
    home = home or store_home() / "service"
    check_writable_directory(home)
    token_map = read_tokens(tokens) if tokens else None
    if executor == "ray":
        from editor.distributed import check_ray

        check_ray()
    lock = claim_home(home)  # noqa: F841  held until the process ends
    token_map = token_map or local_token(home)
    settings = Settings(home=home, tokens=token_map, workers=workers, executor=executor, ray_address=ray_address,
                        max_queued=max_queued, max_queued_per_user=max_queued_per_user,
                        token_file=None if tokens else home / "token")
    import uvicorn

    from editor.service.app import create_app

    click.echo(f"lmedit service on http://{host}:{port} (home {home}; {len(token_map)} user(s); "
               f"{executor} executor, {workers} worker(s))" + ("; token in " + str(home / "token") if not tokens else ""),
               err=True)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")


@main.group(cls=LmeditGroup)
@click.option("--server", envvar="LMEDIT_SERVER", help="Service URL [env LMEDIT_SERVER; default http://127.0.0.1:8321].")
@click.option("--token", envvar="LMEDIT_TOKEN", help="Bearer token [env LMEDIT_TOKEN; default: a local service's].")
@click.pass_context
def jobs(ctx, server, token):
    """Submit and follow jobs on an lmedit service."""
    ctx.obj = {"server": server, "token": token}


def _need(*modules: str, extra: str) -> None:
    """An optional dependency missing is one line saying how to get it, not an ImportError."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"this needs {', '.join(missing)}: pip install 'lmedit[{extra}]'")


def _client():
    _need("httpx", extra="service")
    from editor.service.client import Client

    obj = click.get_current_context().obj  # set by the `jobs` group, inherited by its commands
    return Client(obj["server"], obj["token"])


@jobs.command("submit", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--follow", is_flag=True, help="Print progress until the job ends.")
@click.argument("what", nargs=-1, type=click.UNPROCESSED, required=True)
def jobs_submit(follow, what):
    """Submit a recipe or a command as a job.

    \b
    lmedit jobs submit RECIPE [--set KEY=VALUE ...]   a packaged name, or a recipe file whose text is sent
    lmedit jobs submit attribute heads --n 16 ...    a command, with the options you would give it
    Options of `jobs submit` itself (--follow) come before RECIPE or the command."""
    from editor.service.jobs import options_from_argv, split_command

    command = split_command(list(what))
    client = _client()
    if command is not None:
        job = client.submit(command=command[0], options=options_from_argv(*command))
    else:
        recipe, values, trailing_follow = _recipe_request(list(what))
        follow = follow or trailing_follow
        text = Path(recipe).read_text(encoding="utf-8") if recipe.endswith((".yaml", ".yml")) and Path(recipe).is_file() else recipe
        job = client.submit(recipe=text, set=values)
    click.echo(job)
    if follow:
        _follow(client, job)


def _recipe_request(words: list[str]) -> tuple[str, dict, bool]:
    """``RECIPE [--set K=V ...] [--follow]`` -> (recipe, {key: value}, follow), values read as
    `lmedit run --set` reads them."""
    from editor.settings import parse_value, split_assignment

    recipe, rest, values, follow = words[0], words[1:], {}, False
    while rest:
        token = rest.pop(0)
        if token == "--follow":
            follow = True
            continue
        item = token[len("--set="):] if token.startswith("--set=") else rest.pop(0) if token == "--set" and rest else None
        if item is None:
            raise UserError(f"lmedit jobs submit {recipe}: {token!r} is not --set KEY=VALUE or --follow")
        key, raw = split_assignment(item)
        values[key] = parse_value(raw, key)
    return recipe, values, follow


def _follow(client, job: str) -> None:
    for event in client.events(job):
        data = event.get("data", {})
        if event.get("type") == "log":
            click.echo(data.get("line", ""), err=True)
        elif event.get("type") == "state":
            click.echo(f"[{job}] {data.get('state')}" + (f": {data['error']}" if data.get("error") else ""), err=True)
    final = client.status(job)
    if final["state"] != "succeeded":
        raise click.exceptions.Exit(1)


@jobs.command("list")
@click.option("--json", "as_json", is_flag=True)
def jobs_list(as_json):
    """Your jobs, newest first."""
    from editor.tables import format_table

    rows = _client().jobs()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = [{"id": r["id"], "what": r["spec"].get("recipe") or r["spec"].get("command"), "state": r["state"],
              "progress": f"{r['steps_done']}/{r['steps_total'] or '?'}",
              "step": r["step"] or "" if not r.get("activity") or r["state"] != "running" else f"{r['step']} ({r['activity']})",
              "error": (r["error"] or "")[:60]} for r in rows]
    click.echo(format_table(table, ["id", "what", "state", "progress", "step", "error"]) if table else "no jobs")


@jobs.command("status")
@click.argument("job")
def jobs_status(job):
    """One job's state, step, progress, timings and error, as JSON."""
    click.echo(json.dumps(_client().status(job), indent=2))


@jobs.command("logs")
@click.argument("job")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
def jobs_logs(job, follow):
    """A job's log lines and state changes."""
    client = _client()
    if follow:
        _follow(client, job)
        return
    for event in client.history(job):
        data = event.get("data", {})
        click.echo(data.get("line") or f"[{event.get('type')}] {json.dumps(data)}")


@jobs.command("cancel")
@click.argument("job")
def jobs_cancel(job):
    """Cancel a queued or running job."""
    click.echo(_client().cancel(job)["state"])


@jobs.command("download")
@click.argument("job")
@click.argument("path", required=False)
@click.option("--to", "dest", type=click.Path(path_type=Path), default=Path("."), show_default=True,
              help="Folder to download into.")
def jobs_download(job, path, dest):
    """Download one artifact (PATH), or all of a job's artifacts, into --to."""
    client = _client()
    paths = [path] if path else [a["path"] for a in client.artifacts(job)]
    for p in paths:
        target = dest / job / p
        client.download(job, p, target)
        click.echo(str(target))
