"""``payportal serve``: everything in one command, on embedded defaults or real services.

What it starts, in order: migrations; Ray (local, or joins ``PAYPORTAL_RAY_ADDRESS``)
and the account shards; the sandbox processor on its own port (unless ``--no-sandbox``);
the front door (aiohttp on uvloop). Then, with ``--seed-demo``, the demo merchant. It
prints what it started and where to go, and on SIGINT/SIGTERM stops taking requests,
checkpoints the shards' hot accounts and exits.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from payportal.children import Child, start_child, stop_children
from payportal.config import Settings
from payportal.gc_tuning import tune_for_throughput
from payportal.logs import configure_logging
from payportal.shutdown import Shutdown, wait_for_stop_signal

__all__ = ["front_door_url", "run", "sandbox_webhook_secret"]

log = structlog.get_logger("payportal.server")

# Retries are due on a scale of minutes to days, inquiries from one minute on: a second's
# delay is invisible to payers and costs one indexed query.
JANITOR_INTERVAL_MS = 1_000
# How long `serve` waits for each extra front-door process to listen before giving up.
WORKER_START_S_MAX = 120
# How long a side process (sandbox, mail) gets to stop after SIGTERM before SIGKILL.
CHILD_STOP_S = 10.0
# Browsers keep to HTTPS for a year after seeing it (RFC 6797).
HSTS = "max-age=31536000"
# Requests in flight when a stop begins get this long to finish before aiohttp cancels
# them; a payment's own work takes milliseconds, a charge at most its timeout.
DRAIN_S_MAX = 10.0
# Each later step's own cap, so one that hangs leaves the others time within the bound.
STEP_S_MAX = 5.0
# The background loops may be cancelled mid-run (a first reconciliation or billing round
# over a large database): unwinding waits for its statement on SQLite's shared write lock,
# which on a loaded machine took over 5 s once in the stop test. Still inside the bound.
LOOPS_S_MAX = 10.0


def front_door_url(settings: Settings) -> str:
    """The front door as a process on this machine reaches it (callbacks, health checks)."""
    return settings.local_url


def sandbox_webhook_secret(settings: Settings) -> str:
    """The Standard Webhooks secret the embedded sandbox signs with and the front door
    verifies with: derived from the secret key, so both sides agree without a setting."""
    digest = hmac.new(
        settings.resolve_secret_key().encode(), b"payportal sandbox webhooks", hashlib.sha256
    ).digest()
    return "whsec_" + base64.b64encode(digest).decode()


def run(
    settings: Settings,
    *,
    workers: int | None = None,
    seed_demo: bool = False,
    sandbox: bool = True,
    mail: bool = True,
) -> None:
    configure_logging()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; Windows lacks it
        pass
    status = asyncio.run(
        _serve(settings, workers=workers or 1, seed_demo=seed_demo, sandbox=sandbox, mail=mail)
    )
    if status:
        sys.exit(status)


async def _serve(
    settings: Settings, *, workers: int, seed_demo: bool, sandbox: bool, mail: bool
) -> int:
    from payportal.actors import ShardRouter
    from payportal.actors.cluster import connect_ray, ensure_shards
    from payportal.persistence import Store, migrate

    started: list[str] = []
    # Before the migration (it seals an older database's rows) and before any child or
    # Ray actor starts: they inherit the keys through the environment.
    settings.resolve_data_keys()
    await asyncio.to_thread(migrate, settings.database_url)
    started.append(f"database     {_redacted(settings.database_url)} (migrated)")
    if settings.data_keys_generated:
        started.append("data keys    development keys in var/keys/data-keys "
                       "(set PAYPORTAL_DATA_KEYS in production)")

    if settings.processor == "stripe":
        # The shards' retry janitors read the keys from their own settings: local Ray
        # workers inherit this environment (a .env file's values included).
        settings.export_stripe_settings()
    connect_ray(settings.ray_address)
    advertised = None
    if settings.ray_address is None:
        from payportal.actors.cluster import advertise_local_ray

        advertised = advertise_local_ray(settings.var_dir)
    janitor = None
    stripe = settings.processor == "stripe"
    if stripe:
        sandbox = False  # Stripe charges; no sandbox is started
    # An external sandbox (PAYPORTAL_SANDBOX_URL) is used as the embedded one would be.
    charging = (sandbox or settings.sandbox_external) and not stripe
    if charging or stripe:
        from payportal.actors.cluster import ShardJanitor

        janitor = ShardJanitor(
            processor_url=settings.sandbox_url,
            processor_ca_file=settings.tls_ca_file,
            shards=settings.shards,
            interval_ms=JANITOR_INTERVAL_MS,
            processor=settings.processor,
        )
    handles = ensure_shards(
        settings.shards,
        settings.database_url,
        detached=settings.ray_address is not None,
        janitor=janitor,
    )
    router = ShardRouter(
        handles,
        batch_max_items=settings.batch_max_items,
        batch_max_wait_ms=settings.batch_max_wait_ms,
        queue_max=settings.queue_max,
    )
    router.follow_balances()
    ray_where = settings.ray_address or "local"
    started.append(f"shards       {settings.shards} AccountShard actors on Ray ({ray_where})")
    store = await Store.connect(settings.database_url)

    runners: list[web.AppRunner] = []
    children: list[Child] = []
    processor = None
    base = f"{settings.scheme}://{settings.host}:{settings.port}"
    if sandbox and not settings.sandbox_external:
        # Its own process, as a real processor is: its CPU is not the front door's.
        settings.resolve_secret_key()  # created once here, read by the child
        children.append(
            await start_child(
                "sandbox",
                [sys.executable, "-m", "payportal", "sandbox", "--host", settings.host,
                 "--port", str(settings.sandbox_port), "--callback-url",
                 f"{front_door_url(settings)}/v1/processors/sandbox/callbacks"],
                port=settings.sandbox_port,
                # Its callbacks go to the front door over HTTPS: trust its certificate.
                env={"SSL_CERT_FILE": settings.tls_ca_file} if settings.tls_ca_file else None,
            )
        )  # fmt: skip
        started.append(f"sandbox      {settings.sandbox_url}  (pid {children[-1].pid})")
    elif settings.sandbox_external:
        started.append(f"sandbox      {settings.sandbox_url}  (PAYPORTAL_SANDBOX_URL)")
    if charging:
        from payportal.processors.sandbox_client import SandboxProcessor

        processor = SandboxProcessor.from_settings(settings)
    elif stripe:
        from payportal.processors.stripe import StripeProcessor

        processor = StripeProcessor.from_settings(settings)
        started.append(f"processor    stripe ({settings.stripe_api_base})")

    from payportal.live import StatusPublisher, open_status_streams

    # Live status: the publisher turns committed journal rows into per-account streams.
    streams = open_status_streams(settings.redis_url)
    publisher = StatusPublisher(store, streams, shard_ids=range(settings.shards))
    # Woken by the shards' balance feeds when they commit; a slow timer is the safety net.
    router.balances.on_news(publisher.wake)
    publisher_task = asyncio.create_task(publisher.run_forever(), name="status publisher")
    # A renewed certificate (SIGHUP) reaches the embedded sandbox too: it serves the pair.
    tls_reloaded: list[Callable[[], None]] = [
        functools.partial(os.kill, c.pid, signal.SIGHUP) for c in children if c.name == "sandbox"
    ]
    runners.insert(0, await _front_door(settings, router, store, processor, streams, worker=0,
                                        tls_reloaded=tls_reloaded))  # fmt: skip
    if settings.http_redirect_port is not None:
        runners.append(await _redirect_to_https(settings))
    workers_started = await asyncio.to_thread(_start_workers, settings, workers, sandbox=charging)
    started.append(f"front door   {base}  (API docs {base}/docs)")
    if settings.tls:
        started.append(f"tls          {settings.tls_cert_file} (TLS 1.2+, HSTS; SIGHUP reloads it)")
    if settings.http_redirect_port is not None:
        started.append(f"http         port {settings.http_redirect_port} redirects to {base}")
    started.append(f"payer portal {base}/  (payers sign in at {base}/signin)")
    started.append(f"console      {base}/console  (sign in with a merchant API key)")
    started.append(f"metrics      {base}/metrics  (Prometheus; merchant API key as bearer)")
    if workers > 1:
        started.append(f"             {workers} processes sharing the port (SO_REUSEPORT)")
    from payportal.mail.service import start_mail_processes

    # Processes of their own, off the request path: the catcher and its inbox (unless an
    # SMTP URL is set) and the outbox sender; none with --no-mail.
    mail_lines, mail_children = await start_mail_processes(settings, mail=mail)
    children.extend(mail_children)
    started.extend(mail_lines)

    if janitor is not None:
        started.append(
            f"retries      each shard retries its due payments and asks about unknown "
            f"outcomes, every {JANITOR_INTERVAL_MS} ms"
        )

    from payportal.accounting.scheduler import run_accounting_forever

    # Revenue recognition through yesterday (hourly) and reconciliation of the processor's
    # settlement reports (every 15 min); both idempotent, both in this process only.
    accounting_task = asyncio.create_task(
        run_accounting_forever(router, store.engine, source=processor), name="accounting"
    )
    started.append(
        "accounting   revenue recognized through yesterday (UTC) hourly"
        + ("; settlements reconciled every 15 min" if processor is not None else "")
    )

    from payportal.billing.cli import start_billing_scheduler

    # Due subscription periods invoiced and charged; the claims make a second scheduler
    # (another server, or `payportal billing run`) safe.
    billing_task, billing_line = start_billing_scheduler(settings, router, store, processor)
    started.append(billing_line)

    demo = None
    if seed_demo:
        from payportal.demo import seed_with

        demo = await seed_with(router, store)

    _print_banner(started, demo, base)
    tune_for_throughput()
    received = await wait_for_stop_signal("payportal serve")
    shutdown = Shutdown("payportal serve", settings.shutdown_timeout_s)
    shutdown.begin(received.name)
    # Stop accepting and drain first, so no request meets a half-stopped process.
    await _stop_front_door(shutdown, runners)
    await shutdown.step("front-door workers", lambda: asyncio.to_thread(
        _stop_workers, workers_started, shutdown.remaining_s(DRAIN_S_MAX)))  # fmt: skip
    await shutdown.stop_tasks(
        "background loops", [publisher_task, accounting_task, billing_task], cap_s=LOOPS_S_MAX
    )
    await shutdown.step("shard router", router.close, cap_s=STEP_S_MAX)
    # This process's own connections before the shards flush: a loop cancelled inside a
    # transaction must not hold SQLite's write lock while the shards wait for it.
    await shutdown.step("store", store.close, cap_s=STEP_S_MAX)
    await shutdown.step("status streams", streams.close, cap_s=STEP_S_MAX)
    if processor is not None:
        await shutdown.step("processor client", processor.close, cap_s=STEP_S_MAX)
    # The mail sender too before the flush: on SQLite every writer shares one lock, and
    # a sender stuck mid-round (killed after CHILD_STOP_S) must not hold it meanwhile.
    await shutdown.step("child processes", lambda: stop_children(
        children, timeout_s=shutdown.remaining_s(CHILD_STOP_S)))  # fmt: skip
    # A clean stop leaves no journal to replay: checkpoint every hot account now. A
    # shard that cannot answer (its Ray stopping too) replays its journal next start. The
    # last step, so it may use what is left of the bound: a flush of many accounts on
    # SQLite's one write lock took over 10 s once in the stop test.
    await shutdown.step("checkpoint flush", lambda: asyncio.gather(
        *(h.flush_checkpoints.remote() for h in handles)))  # fmt: skip
    if advertised is not None:
        advertised.unlink(missing_ok=True)
    status = shutdown.finish()
    print("payportal stopped" if status == 0 else
          f"payportal stopped; did not finish: {', '.join(shutdown.unfinished)}",
          file=sys.stderr, flush=True)  # fmt: skip
    return status


async def _stop_front_door(shutdown: Shutdown, runners: list[web.AppRunner]) -> None:
    """Stop listening, end the event streams, let requests in flight finish (bounded by
    each runner's ``shutdown_timeout``, after which aiohttp cancels them)."""
    for runner in runners:
        await shutdown.step("front door", runner.cleanup, cap_s=DRAIN_S_MAX + 5)


async def _front_door(
    settings: Settings, router: Any, store: Any, processor: Any, streams: Any, *, worker: int,
    tls_reloaded: list[Callable[[], None]] | None = None,
) -> web.AppRunner:
    """The API and the processor callbacks on the shared port; several processes may each
    run one (SO_REUSEPORT), all sending to the same named shards."""
    from payportal.http.app import create_app
    from payportal.http.callbacks import add_callback_routes
    from payportal.http.connections import ClientLimits, GuardedSite
    from payportal.http.events import STATUS_STREAMS
    from payportal.mail import configure_public_url
    from payportal.metrics.http import METRICS
    from payportal.web import install_web

    # Links in emails this process writes (enqueue_email) point at the public URL.
    configure_public_url(settings.public_url)
    app = create_app(router=router, store=store, settings=settings, processor=processor)
    app[STATUS_STREAMS] = streams
    install_web(app, settings=settings)
    # Each process's own counters are told apart by this label (payportal.metrics).
    app[METRICS].worker = str(worker)
    if settings.processor == "stripe":
        from payportal.http.stripe_callbacks import add_stripe_callback_routes

        # Before the sandbox's route, whose {processor} segment would match "stripe".
        add_stripe_callback_routes(app, store=store, router=router, client=processor.client,
                                   secrets=settings.stripe_webhook_secrets)  # fmt: skip
    add_callback_routes(
        app, store=store, router=router, secrets={"sandbox": [sandbox_webhook_secret(settings)]}
    )

    async def tag_worker(_: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Payportal-Worker"] = str(worker)

    app.on_response_prepare.append(tag_worker)
    context = None
    if settings.tls:
        context = _tls_context(settings, tls_reloaded or [])

        async def strict_transport(_: web.Request, response: web.StreamResponse) -> None:
            response.headers["Strict-Transport-Security"] = HSTS

        app.on_response_prepare.append(strict_transport)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=DRAIN_S_MAX)
    await runner.setup()
    await GuardedSite(
        runner, settings.host, settings.port, reuse_port=True,
        limits=ClientLimits.from_settings(settings), ssl_context=context,
    ).start()
    return runner


def _tls_context(settings: Settings, reloaded: list[Callable[[], None]]) -> Any:
    """The front door's TLS context, reloaded from its files on SIGHUP (renewals); then
    each of ``reloaded`` is called (the sandbox child is told to reload its own)."""
    import signal

    from payportal import tls

    assert settings.tls_cert_file is not None
    assert settings.tls_key_file is not None
    cert, key = settings.tls_cert_file, settings.tls_key_file
    context = tls.server_context(cert, key)

    def reload() -> None:
        try:
            tls.reload(context, cert, key)
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            log.error("tls_reload_failed", error=type(error).__name__, kept="the old pair")
        else:
            log.info("tls_reloaded", cert_file=cert)
        for hook in reloaded:
            with contextlib.suppress(OSError):  # a child already gone
                hook()

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    return context


async def _redirect_to_https(settings: Settings) -> web.AppRunner:
    """Plain HTTP on ``http_redirect_port``: every request is sent to the HTTPS port."""
    from yarl import URL

    async def redirect(request: web.Request) -> web.StreamResponse:
        if settings.public_url_configured is not None:
            target = URL(settings.public_url)
        else:
            target = URL.build(scheme="https", host=request.url.host or "127.0.0.1",
                               port=settings.port)  # fmt: skip
        location = target.with_path(request.path).with_query(request.query)
        # 308: the method and body are kept, so a POST is not turned into a GET.
        raise web.HTTPPermanentRedirect(location)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    assert settings.http_redirect_port is not None
    await web.TCPSite(runner, settings.host, settings.http_redirect_port).start()
    return runner


def _start_workers(settings: Settings, workers: int, *, sandbox: bool) -> list[Any]:
    """Front-door processes 1..workers-1, started and listening when this returns; this
    process is worker 0 and also runs the sandbox, the status publisher and the demo seed, which
    must exist once."""
    if workers <= 1:
        return []
    import multiprocessing

    import ray

    address = ray.get_runtime_context().gcs_address
    context = multiprocessing.get_context("spawn")
    children = []
    for worker in range(1, workers):
        ready = context.Event()
        child = context.Process(
            target=_worker_main, args=(settings, address, worker, sandbox, ready, os.getpid()),
            daemon=True,
        )
        child.start()
        children.append((child, ready))
    for child, ready in children:
        # A worker joins Ray and opens its pool before it listens: seconds, not minutes.
        waited_s = 0.0
        while not ready.wait(0.5):
            waited_s += 0.5
            if not child.is_alive() or waited_s > WORKER_START_S_MAX:
                raise RuntimeError(f"front-door worker {child.pid} did not start")
    return [child for child, _ in children]


def _stop_workers(children: list[Any], timeout_s: float) -> None:
    """SIGTERM each worker (it runs its own bounded stop), wait, SIGKILL what is left."""
    for child in children:
        child.terminate()
    deadline = time.monotonic() + timeout_s
    for child in children:
        child.join(timeout=max(0.0, deadline - time.monotonic()))
    for child in children:
        if child.is_alive():
            child.kill()
            child.join()


def _worker_main(
    settings: Settings, address: str, worker: int, sandbox: bool, ready: Any, parent: int
) -> None:
    from payportal.children import die_with_parent

    # A worker never outlives serve, also when serve is killed and cannot stop it.
    die_with_parent(parent)
    configure_logging()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    status = asyncio.run(_worker(settings, address, worker, sandbox, ready))
    if status:
        sys.exit(status)


async def _worker(
    settings: Settings, address: str, worker: int, sandbox: bool, ready: Any
) -> int:
    from payportal.actors import ShardRouter
    from payportal.actors.cluster import connect_ray, get_shards
    from payportal.persistence import Store

    connect_ray(address)
    router = ShardRouter(
        get_shards(settings.shards),
        batch_max_items=settings.batch_max_items,
        batch_max_wait_ms=settings.batch_max_wait_ms,
        queue_max=settings.queue_max,
    )
    router.follow_balances()
    store = await Store.connect(settings.database_url)
    processor: Any = None
    if settings.processor == "stripe":
        from payportal.processors.stripe import StripeProcessor

        processor = StripeProcessor.from_settings(settings)
    elif sandbox:
        from payportal.processors.sandbox_client import SandboxProcessor

        processor = SandboxProcessor.from_settings(settings)
    from payportal.live import open_status_streams

    # On Redis every stream is shared; the in-process stand-in is fed only in worker 0.
    streams = open_status_streams(settings.redis_url)
    runner = await _front_door(settings, router, store, processor, streams, worker=worker)
    tune_for_throughput()
    ready.set()
    process = f"payportal serve worker {worker}"
    received = await wait_for_stop_signal(process)
    shutdown = Shutdown(process, settings.shutdown_timeout_s)
    shutdown.begin(received.name)
    await _stop_front_door(shutdown, [runner])
    await shutdown.step("shard router", router.close, cap_s=STEP_S_MAX)
    if processor is not None:
        await shutdown.step("processor client", processor.close, cap_s=STEP_S_MAX)
    await shutdown.step("status streams", streams.close, cap_s=STEP_S_MAX)
    await shutdown.step("store", store.close, cap_s=STEP_S_MAX)
    return shutdown.finish()


def _redacted(url: str) -> str:
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, credentials = head.partition("://")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{tail}" if ":" in credentials else url


def _print_banner(started: list[str], demo: Any, base: str) -> None:
    lines = ["", "payportal is running", ""]
    lines += [f"  {line}" for line in started]
    if demo is not None:
        lines += [
            "",
            "  demo merchant seeded:",
            f"    accounts        {', '.join(demo.accounts)}",
            f"    API key         {demo.api_key}   (shown once; stored hashed)",
            f"    payer login     {demo.payer_email} / {demo.payer_password}",
            f"    try             curl -H 'Authorization: Bearer {demo.api_key}' "
            f"{base}/v1/accounts",
        ]
    lines += ["", "  Ctrl-C stops everything.", ""]
    print("\n".join(lines), flush=True)
