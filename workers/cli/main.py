"""The ``taskyard`` command: run nodes, send requests, look at the fleet."""

from __future__ import annotations

import datetime
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from workers.cli import embedded
from workers.cli.flower import run_flower, start_flower_process, url
from workers.cli.scaffold import package_name, scaffold
from workers.client.progress import wait_with_progress
from workers.core.addresses import is_sentinel
from workers.core.api import version_key
from workers.core.config import Config, effective, load_config
from workers.core.deadletters import DeadLetters
from workers.core.keys import host_queue, nodename
from workers.core.masking import mask_url
from workers.core.registry import UNREADABLE, Registry
from workers.exceptions import (
    ConfigError,
    InvalidRequest,
    NotFound,
    TaskyardError,
    UnknownService,
)

if TYPE_CHECKING:
    from workers.client.rpc import Client
    from workers.core.application import Taskyard

# Celery, kombu and the client are imported by the commands that use them: a command that
# only reads the registry (`taskyard services`) starts in a third of the time without them.

F = TypeVar("F", bound=Callable[..., Any])

POOLS = ("prefork", "threads", "solo")


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"taskyard: {message}", err=True)
    sys.exit(code)


def reports_errors(fn: F) -> F:
    """Turn taskyard errors into one line on stderr and a non-zero exit."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            _fail(f"configuration error: {exc}", 2)
        except TaskyardError as exc:
            _fail(f"{type(exc).__name__}: {exc}", 1)

    return wrapper  # type: ignore[return-value]


def _use_host(host: str | None) -> None:
    """Make ``host`` this process's node name (children inherit it through the environment)."""
    if host:
        os.environ["TASKYARD_HOST"] = host


def _app(config: Config | None = None) -> Taskyard:
    """The app of this command (the process's default from now on)."""
    from workers.core.application import Taskyard, set_default_app

    app = Taskyard(config or load_config(), set_as_current=True)
    set_default_app(app)
    return app


def _client(service: str, host: str | None = None) -> Client:
    from workers.client.rpc import Client

    return Client(service, app=_app(), host=host)


def _tls(config: Config) -> dict[str, Any]:
    return config.tls.redis_kwargs() if config.redis_url.startswith("rediss://") else {}


def parse_arguments(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; a value is JSON when it parses as JSON, a string otherwise."""
    arguments: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="ARGUMENTS")
        try:
            arguments[key] = json.loads(raw)
        except ValueError:
            arguments[key] = raw
    return arguments


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="taskyard")
def main() -> None:
    """taskyard: fleets of Python worker services on Celery and Redis."""


# -- nodes -------------------------------------------------------------------


def run_worker(
    services: Sequence[str], *, pool: str, concurrency: int | None, loglevel: str,
    extra: Sequence[str] = (),
) -> None:
    """Run a Celery worker in this process consuming the services' shared and host queues."""
    app = _app()
    config = app.config
    names = list(services) or list(config.services)
    if not names:
        raise ConfigError(
            "no services are configured: declare one in the project's settings.toml "
            "([default.services.<name>] with manager and driver), or run `taskyard init`"
        )
    for name in names:
        config.service(name)
    queues = [q for name in names for q in (name, host_queue(name, config.host))]
    argv = [
        "worker", "--queues", ",".join(queues),
        "--hostname", nodename(config.host),
        "--pool", pool, "--loglevel", loglevel,
        "--without-mingle", "--without-gossip",
    ]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    argv += list(extra)
    # app.worker_main() drops the worker's exit code; run Celery's command ourselves.
    from celery.bin.celery import celery as celery_command

    from workers.node.exits import StopWatch

    celery_command.params[0].default = app
    try:
        with StopWatch.watching() as stops:
            code = celery_command.main(args=argv, prog_name="taskyard", standalone_mode=False)
    finally:
        celery_command.params[0].default = None
    code = stops.exit_code(code)
    if code:
        sys.exit(code)


def _worker_options(fn: F) -> F:
    fn = click.option("--loglevel", "-l", default="INFO", show_default=True,
                      help="Log level of the node.")(fn)
    fn = click.option("--pool", "-P", type=click.Choice(POOLS), default="prefork",
                      show_default=True, help="How tasks run: processes, threads or inline.")(fn)
    fn = click.option("--concurrency", "-c", type=click.IntRange(min=1), default=2,
                      show_default=True, help="Tasks run at once.")(fn)
    fn = click.option("--host", help="This node's name (default: settings key host).")(fn)
    return fn


@main.command()
@click.argument("services", nargs=-1)
@_worker_options
@reports_errors
def worker(services: tuple[str, ...], host: str | None, concurrency: int, pool: str,
           loglevel: str) -> None:
    """Run a node serving SERVICES (every configured service when none are named)."""
    _use_host(host)
    run_worker(services, pool=pool, concurrency=concurrency, loglevel=loglevel)


@main.command()
@_worker_options
@click.option("--flower", "with_flower", is_flag=True, help="Start Flower beside the node.")
@reports_errors
def up(host: str | None, concurrency: int, pool: str, loglevel: str, with_flower: bool) -> None:
    """Run a node with every configured service, starting a private Redis if none answers."""
    _use_host(host)
    config = load_config()
    server = None
    flower = None
    # A Sentinel list is a production fleet's: nodes wait for its master as they do for any.
    if not is_sentinel(config.redis_url) and not embedded.answers(config.redis_url,
                                                                  **_tls(config)):
        if not (config.embedded_redis and embedded.is_local(config.redis_url)):
            raise ConfigError(
                f"nothing answers at redis_url {mask_url(config.redis_url)}; start "
                "Redis there or point redis_url (TASKYARD_REDIS_URL) at one"
            )
        server = embedded.start_in_place_of(config.redis_url, config.state_dir)
        click.echo(
            f"taskyard: nothing answers at {config.redis_url}; started a private redis-server "
            f"there (data in {server.data_dir}); it stops with this node",
            err=True,
        )
    try:
        if with_flower:
            flower = start_flower_process(config)
            click.echo(f"taskyard: Flower at {url(config)}", err=True)
        run_worker((), pool=pool, concurrency=concurrency, loglevel=loglevel)
    finally:
        if flower is not None:
            flower.terminate()
            flower.wait(10)
        if server is not None:
            server.stop()


@main.command()
@click.argument("directory", type=click.Path(file_okay=True, path_type=Path))
@click.option("--name", help="The project's name (default: the directory's); its package and "
                             "service take it too.")
@reports_errors
def init(directory: Path, name: str | None) -> None:
    """Make a new project in DIRECTORY: one service with its drivers, settings and tests."""
    written = scaffold(directory, name)
    package = package_name(name or directory.resolve().name)
    click.echo(f"taskyard: made {len(written)} files in {directory}:")
    for path in written:
        click.echo(f"  {path.relative_to(directory)}")
    click.echo(f"next: cd {directory} && pip install -e '.[test]' && pytest && taskyard up\n"
               f"then, in another shell: taskyard call {package} digest text=hello")


# -- requests ----------------------------------------------------------------


def _request_options(fn: F) -> F:
    fn = click.option("--host", help="Send to this node's own queue only.")(fn)
    fn = click.argument("arguments", nargs=-1)(fn)
    fn = click.argument("method")(fn)
    fn = click.argument("service")(fn)
    return fn


@main.command()
@_request_options
@click.option("--timeout", type=float, help="Seconds to wait (default: settings rpc_timeout).")
@reports_errors
def call(service: str, method: str, arguments: tuple[str, ...], host: str | None,
         timeout: float | None) -> None:
    """Call METHOD of SERVICE with key=value ARGUMENTS and print the result as JSON."""
    client = _client(service).prepare(host=host, timeout=timeout)
    handle = client.cast(method, **parse_arguments(arguments))
    _print_json(wait_with_progress(handle, client.timeout, sys.stderr))


@main.command()
@_request_options
@click.option("--countdown", type=float, help="Run it no sooner than this many seconds from now.")
@click.option("--eta", type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S",
                                                     "%Y-%m-%d %H:%M:%S"]),
              help="Run it no sooner than then (ISO 8601; local time without a zone).")
@click.option("--expires", type=float, help="Never run it once this many seconds have passed.")
@reports_errors
def cast(service: str, method: str, arguments: tuple[str, ...], host: str | None,
         countdown: float | None, eta: datetime.datetime | None,
         expires: float | None) -> None:
    """Send METHOD of SERVICE without waiting; print the task id."""
    client = _client(service, host=host).prepare(countdown=countdown, eta=eta, expires=expires)
    click.echo(client.cast(method, **parse_arguments(arguments)).id)


@main.command()
@click.argument("task_id")
@click.option("--terminate", is_flag=True,
              help="Also stop it where it runs now (its driver's commands are killed).")
@reports_errors
def cancel(task_id: str, terminate: bool) -> None:
    """Cancel the request TASK_ID: it never runs, or with --terminate stops where it runs.

    Exits 1 when it had already finished (nothing changed).
    """
    from workers.client.handle import cancel as cancel_request

    outcome = cancel_request(_app(), task_id, terminate=terminate)
    click.echo(str(outcome))
    if not outcome.changed:
        sys.exit(1)


@main.command()
@click.argument("service", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the published documents as JSON.")
@reports_errors
def describe(service: str | None, as_json: bool) -> None:
    """The endpoints of SERVICE (or of every service): arguments, types and docs.

    Read from what the nodes published, so it needs no service's code.
    """
    app = _app()
    registry = app.registry
    names = [service] if service else registry.services()
    published = {name: registry.apis(name) for name in names}
    if service and not published[service]:
        raise UnknownService(
            f"no node of {service!r} has published its endpoints (start one: it publishes "
            "them when it starts)"
        )
    if as_json:
        _print_json({name: {version: api.to_doc() for version, (api, _) in apis.items()}
                     for name, apis in published.items() if apis})
        return
    click.echo(render_apis(published, registry.service_down_time))


def render_apis(published: dict[str, dict[str, Any]], down_time: float) -> str:
    """Each service's published API versions, endpoints with arguments, and docs."""
    lines: list[str] = []
    for name, apis in sorted(published.items()):
        for version in sorted(apis, key=version_key):
            api, age = apis[version]
            live = "served now" if age <= down_time else "no live node serves it"
            lines.append(f"{name}  API {version}  ({live})")
            for endpoint_name, endpoint in sorted(api.endpoints.items()):
                lines.append(f"  {endpoint_name}({endpoint.binder.describe()})")
                for doc_line in endpoint.doc.splitlines()[:1] or ["(no docstring)"]:
                    lines.append(f"      {doc_line}")
    return "\n".join(lines) if lines else "(no node has published an API; start one)"


# -- watching -------------------------------------------------------------------


@main.command("flower")
@click.option("--address", help="Listen here (default: settings flower.address).")
@click.option("--port", type=int, help="Port (default: settings flower.port).")
@reports_errors
def run_flower_command(address: str | None, port: int | None) -> None:
    """Run Flower for this fleet (http://127.0.0.1:5555/ by default)."""
    config = load_config()
    if address is not None or port is not None:
        flower = replace(config.flower, address=config.flower.address if address is None
                         else address, port=config.flower.port if port is None else port)
        config = config.with_overrides(flower=flower)
    code = run_flower(_app(config), config)
    if code:
        sys.exit(code)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--timeout", type=float, default=1.0, show_default=True,
              help="Seconds to wait for nodes to say what they are running.")
@reports_errors
def status(as_json: bool, timeout: float) -> None:
    """The fleet on one screen: nodes, queue lengths, delayed requests, requests running and
    their progress."""
    from workers.cli.status import gather, render

    data = gather(_app(), timeout)
    if as_json:
        _print_json(data)
    else:
        click.echo(render(data))


# -- settings and fleet ------------------------------------------------------------


@main.command("config")
@reports_errors
def show_config() -> None:
    """Print the effective settings (secrets masked), with the files they came from."""
    _print_json(effective(load_config()))


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
@reports_errors
def services(ctx: click.Context, as_json: bool) -> None:
    """The services table: every service on every host, up, down or disabled."""
    if ctx.invoked_subcommand is not None:
        return
    records = Registry.from_config(load_config()).list()
    if as_json:
        _print_json([r.as_dict() for r in records])
        return
    rows = [("SERVICE", "HOST", "STATE", "LAST SEEN", "CAPABILITIES")]
    for r in records:
        seen = "never" if r.age == float("inf") else f"{r.age:.1f}s ago"
        caps = (f"(report unreadable: {r.info[UNREADABLE]})" if UNREADABLE in r.info
                else summarize(r.capabilities))
        state = f"{r.state} ({r.disabled_reason})" if r.disabled_reason else r.state
        rows.append((r.service, r.host, state, seen, caps))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4]))
                   + "  " + row[4])
    if len(rows) == 1:
        click.echo("(no services have reported; start a node with `taskyard up`)")


def summarize(capabilities: dict[str, Any], width: int = 100) -> str:
    """The figures of a capabilities dict first, then its short words, on one line."""
    numbers = [f"{k}={v:g}" for k, v in sorted(capabilities.items())
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    words = [f"{k}={v}" for k, v in sorted(capabilities.items())
             if isinstance(v, str) and len(v) <= 20]
    line = ", ".join(numbers + words)
    return line if len(line) <= width else line[: width - 3] + "..."


@services.command()
@click.argument("service")
@click.argument("host")
@click.option("--reason", required=True, help="Why, for whoever looks at the table.")
@reports_errors
def disable(service: str, host: str, reason: str) -> None:
    """Keep new work away from SERVICE on HOST."""
    config = load_config()
    config.service(service)
    Registry.from_config(config).disable(service, host, reason)
    click.echo(f"{service} on {host} disabled: {reason}")


@services.command()
@click.argument("service")
@click.argument("host")
@reports_errors
def forget(service: str, host: str) -> None:
    """Remove SERVICE on HOST from the registry at once (a host that is gone for good)."""
    if Registry.from_config(load_config()).forget(service, host):
        click.echo(f"{service} on {host} forgotten")
    else:
        raise NotFound(f"the registry knows no {service} on {host!r}")


@services.command()
@click.argument("service")
@click.argument("host")
@reports_errors
def enable(service: str, host: str) -> None:
    """Let SERVICE on HOST take work again."""
    config = load_config()
    config.service(service)
    was = Registry.from_config(config).enable(service, host)
    click.echo(f"{service} on {host} enabled" + ("" if was else " (it was not disabled)"))


@main.command("placement")
@click.argument("service", required=False)
@click.argument("resource", required=False)
@click.option("--host", help="That host's allocations: each claim on it.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@reports_errors
def placement_command(service: str | None, resource: str | None, host: str | None,
                      as_json: bool) -> None:
    """Each host's inventory, usage from claims and allocations; with RESOURCE, why its last
    placement chose its host (candidates, filters, weights, every attempt)."""
    from workers.cli import placement

    registry = Registry.from_config(load_config())
    if (resource or host) and not service:
        raise click.UsageError("name the SERVICE first: taskyard placement SERVICE "
                               "[RESOURCE | --host HOST]")
    if resource and service:
        found = placement.placement(registry, service, resource)
        if found is None:
            raise NotFound(f"{service} {resource!r} holds no claim and has no placement record")
        _print_json(found) if as_json else click.echo(placement.render_placement(found))
        return
    if host and service:
        allocations = placement.allocations(registry, service, host)
        if as_json:
            _print_json(allocations)
        else:
            click.echo(placement.render_allocations(service, host, allocations))
        return
    names = [service] if service else placement.services_with_inventory(registry)
    rows = [row for name in names for row in placement.hosts(registry, name)]
    _print_json(rows) if as_json else click.echo(placement.render_hosts(rows))


@main.command()
@click.argument("service", required=False)
@click.option("--requeue", "requeue_id", metavar="ID", help="Send this dead letter again.")
@click.option("--host", "to_host", help="With --requeue: to this node's own queue instead.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@reports_errors
def deadletters(service: str | None, requeue_id: str | None, to_host: str | None,
                as_json: bool) -> None:
    """Messages nodes refused, with the reason (of SERVICE, or of every service)."""
    app = _app()
    letters = DeadLetters(app.records)
    if requeue_id:
        entry, queue = requeue(app, letters, requeue_id, to_host)
        click.echo(f"requeued {requeue_id}: {entry['task']}[{entry['task_id']}] to {queue}")
        return
    entries = letters.list(service)
    if as_json:
        _print_json(entries)
        return
    if not entries:
        click.echo("no dead letters" + (f" for {service}" if service else ""))
        return
    for e in entries:
        at = datetime.datetime.fromtimestamp(e["at"]).strftime("%Y-%m-%d %H:%M:%S")
        what = e["task"] or "(undecodable)"
        mark = "" if e["requeueable"] else "  [not requeueable]"
        click.echo(f"{e['id']}  {at}  {e['service']:<10} {what:<28} on {e['host']}{mark}")
        click.echo(f"    {e['reason']}")


def requeue(app: Any, letters: Any, letter_id: str,
            to_host: str | None = None) -> tuple[dict[str, Any], str]:
    """Send a dead letter again under its task id (a waiting caller gets its answer).

    It goes to its own queue, or to ``to_host``'s; it leaves the list.
    """
    service, entry, raw = letters.find(letter_id)
    if not entry["requeueable"]:
        raise InvalidRequest(
            f"dead letter {letter_id} cannot be requeued: {entry['reason']} (a message that "
            "could not be read, or failed its signature check, is kept only to be looked at)"
        )
    queue = host_queue(service, to_host) if to_host else entry["queue"] or service
    app.send_task(entry["task"], args=entry["args"] or (), kwargs=entry["kwargs"] or {},
                  task_id=entry["task_id"], queue=queue, headers=entry["headers"] or {})
    letters.remove(service, raw)
    return entry, queue
