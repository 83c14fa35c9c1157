"""The `payportal` command: a thin shell over the server, migrations, keys and demo data.

Model: each command loads `Settings`, then calls one function in the module that does the
work. Those modules are imported inside the command, so `payportal --help` and a settings
error answer instantly without importing Ray or SQLAlchemy.

Rules:
- A malformed setting prints its one-line message to stderr and exits 2 (usage error).
- A part of the system that is not built yet is said so in one line, exit 1; an import
  error *inside* a module that exists is a real bug and is raised, not hidden.
- Nothing here prints a secret, except the new API key that `keys create` exists to show
  once.
"""

import dataclasses
import importlib
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from payportal.config import Settings, SettingsError, load_settings

EXIT_SETTINGS = 2  # what usage errors exit with, so scripts can tell "fix your config"
EXIT_NOT_BUILT = 1
EXIT_FAILED = 1  # the command could not do its work (e.g. its port is taken)

app = typer.Typer(
    name="payportal",
    help="Accounts-receivable payment portal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # tracebacks full of locals could show secrets
)
keys_app = typer.Typer(help="Merchant API keys.", no_args_is_help=True)
demo_app = typer.Typer(help="Demo data.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(demo_app, name="demo")
billing_app = typer.Typer(help="Recurring billing.", no_args_is_help=True)
app.add_typer(billing_app, name="billing")
revenue_app = typer.Typer(help="Revenue recognition and its report.", no_args_is_help=True)
app.add_typer(revenue_app, name="revenue")


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as error:
        _fail(str(error), EXIT_SETTINGS)


def _function(module_name: str, function_name: str, command: str, part: str) -> Callable[..., Any]:
    """`module_name.function_name`, or exit 1 saying that `part` is not built yet."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        # Only the module itself (or its package) missing means "not built yet".
        missing = error.name or ""
        if not (module_name == missing or module_name.startswith(missing + ".")):
            raise
        _fail(
            f"payportal {command}: {part} is not built yet ({module_name} is missing)",
            EXIT_NOT_BUILT,
        )
    function = getattr(module, function_name, None)
    if not callable(function):
        _fail(
            f"payportal {command}: {part} is not built yet "
            f"({module_name}.{function_name} is missing)",
            EXIT_NOT_BUILT,
        )
    return function  # type: ignore[no-any-return]


def _sqlite_directory_ensure(settings: Settings) -> None:
    """SQLite creates the database file but not its directory; the default lives in var/."""
    prefix = "sqlite+aiosqlite:///"
    if settings.database_url.startswith(prefix):
        path = settings.database_url.removeprefix(prefix).partition("?")[0]
        if path and path != ":memory:":
            Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address [PAYPORTAL_HOST].")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65_535, help="Listen port [PAYPORTAL_PORT].")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Front-door processes sharing the port [default: 1]."),
    ] = None,
    seed_demo: Annotated[
        bool, typer.Option("--seed-demo/--no-seed-demo", help="Seed the demo merchant first.")
    ] = False,
    sandbox: Annotated[
        bool, typer.Option("--sandbox/--no-sandbox", help="Start the sandbox processor.")
    ] = True,
    mail: Annotated[
        bool,
        typer.Option("--mail/--no-mail", help="Start the mail sender and, without "
                     "PAYPORTAL_SMTP_URL, the built-in mail catcher."),
    ] = True,
) -> None:  # fmt: skip
    """Run the front door, shards, sandbox processor, mail sender and mail catcher."""
    settings = _settings()
    # Command-line options override the environment, the way a one-off run is expected to.
    settings = dataclasses.replace(
        settings,
        host=settings.host if host is None else host,
        port=settings.port if port is None else port,
    )
    if sandbox and settings.port == settings.sandbox_port:
        _fail(
            f"--port: must differ from PAYPORTAL_SANDBOX_PORT (both are {settings.port})",
            EXIT_SETTINGS,
        )
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        import ssl

        from payportal.tls import server_context

        try:
            server_context(settings.tls_cert_file, settings.tls_key_file)
        except (ssl.SSLError, OSError, ValueError) as error:
            _fail(f"PAYPORTAL_TLS_CERT_FILE / PAYPORTAL_TLS_KEY_FILE: not a certificate and "
                  f"its key ({type(error).__name__})", EXIT_SETTINGS)  # fmt: skip
    run = _function("payportal.server", "run", "serve", "the server")
    _sqlite_directory_ensure(settings)
    run(settings, workers=workers, seed_demo=seed_demo, sandbox=sandbox, mail=mail)


@app.command("dev-cert")
def dev_cert(
    directory: Annotated[
        Path, typer.Option(help="Where the files go (default: var/tls).")
    ] = Path("var/tls"),
) -> None:
    """A local CA and a certificate it signed for localhost and 127.0.0.1, to try HTTPS."""
    from payportal.tls import make_dev_cert

    made = make_dev_cert(directory)
    typer.echo(
        f"certificate  {made.cert_file}\nkey          {made.key_file}\n"
        f"CA           {made.ca_file}  (what clients must trust: curl --cacert {made.ca_file})\n"
        f"\nPAYPORTAL_TLS_CERT_FILE={made.cert_file} PAYPORTAL_TLS_KEY_FILE={made.key_file} "
        f"PAYPORTAL_TLS_CA_FILE={made.ca_file} payportal serve --seed-demo"
    )


@app.command()
def sandbox(
    host: Annotated[str | None, typer.Option(help="Listen address [PAYPORTAL_HOST].")] = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65_535, help="Listen port [PAYPORTAL_SANDBOX_PORT]."),
    ] = None,
    callback_url: Annotated[
        str | None,
        typer.Option(help="Where signed callbacks go [the front door's callback route]."),
    ] = None,
    faults: Annotated[
        str, typer.Option(help='Initial fault knobs as JSON, e.g. \'{"latency_ms": 300}\'.')
    ] = "{}",
    seed: Annotated[int, typer.Option(help="Seed of the sandbox's random faults.")] = 0,
) -> None:
    """Run the sandbox card processor on its own (serve starts one unless told not to)."""
    settings = _settings()
    run_sandbox = _function("payportal.processors.sandbox", "run_for_settings", "sandbox",
                            "the sandbox processor")  # fmt: skip
    try:
        run_sandbox(settings, host=host, port=port, callback_url=callback_url, faults=faults,
                    seed=seed)  # fmt: skip
    except ValueError as error:
        _fail(f"payportal sandbox: {error}", EXIT_SETTINGS)


@app.command("mail-catcher")
def mail_catcher(
    smtp_port: Annotated[
        int | None,
        typer.Option(min=1, max=65_535, help="SMTP port [PAYPORTAL_MAIL_CATCHER_PORT]."),
    ] = None,
    ui_port: Annotated[
        int | None,
        typer.Option(min=1, max=65_535, help="The inbox's port [PAYPORTAL_MAIL_UI_PORT]."),
    ] = None,
) -> None:
    """Run the built-in mail catcher and its inbox on loopback, on their own."""
    settings = _settings()
    run_catcher = _function("payportal.mail.catcher", "run_catcher_process", "mail-catcher",
                            "the mail catcher")  # fmt: skip
    try:
        run_catcher(settings, smtp_port=smtp_port, ui_port=ui_port)
    except OSError as error:
        _fail(f"payportal mail-catcher: {error}", EXIT_FAILED)


@app.command()
def mail(
    catcher_port: Annotated[
        int | None,
        typer.Option(min=1, max=65_535, help="The catcher's SMTP port, used when "
                     "PAYPORTAL_SMTP_URL is unset [PAYPORTAL_MAIL_CATCHER_PORT]."),
    ] = None,
    public_url: Annotated[
        str | None, typer.Option(help="Base of the links in emails [PAYPORTAL_PUBLIC_URL].")
    ] = None,
) -> None:  # fmt: skip
    """Send the outbox's emails, on its own (serve starts one unless told --no-mail)."""
    settings = _settings()
    run_sender = _function("payportal.mail.service", "run_sender_process", "mail",
                           "the mail sender")  # fmt: skip
    _sqlite_directory_ensure(settings)
    run_sender(settings, catcher_port=catcher_port, public_url=public_url)


@app.command()
def migrate() -> None:
    """Apply database migrations to PAYPORTAL_DATABASE_URL."""
    settings = _settings()
    migrate_database = _function(
        "payportal.persistence", "migrate", "migrate", "the persistence layer"
    )
    _sqlite_directory_ensure(settings)
    settings.resolve_data_keys()  # the migration seals an older database's rows
    migrate_database(settings.database_url)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="What the key is for, e.g. 'erp'.")],
) -> None:
    """Create a merchant API key and print it; it is stored hashed and never shown again."""
    settings = _settings()
    create_api_key = _function(
        "payportal.persistence.keys", "create_api_key", "keys create", "API key storage"
    )
    typer.echo(create_api_key(settings.database_url, name))


@keys_app.command("rotate-data-key")
def keys_rotate_data_key(
    purpose: Annotated[
        str, typer.Option(help="Which data key: token, contact, message, response, or all.")
    ] = "all",
    settle_s: Annotated[
        float, typer.Option(min=0, help="Wait between steps, for running processes to "
                            "learn each key state [default: twice their refresh].")
    ] = -1,
) -> None:
    """Rotate a data key: re-seal every value under a new version, then destroy the old."""
    from payportal.persistence import sealing
    from payportal.persistence.rotation import rotate_data_key

    purposes = sealing.PURPOSES if purpose == "all" else (purpose,)

    def progress(column: str, done: int) -> None:
        typer.echo(f"  {column}: {done} re-sealed")

    async def main(engine: Any, keyring: Any) -> None:
        for name in purposes:
            typer.echo(f"rotating the {name} data key")
            report = await rotate_data_key(
                engine, keyring, name, progress=progress,
                **({} if settle_s < 0 else {"settle_s": settle_s}),
            )  # fmt: skip
            total = sum(report.resealed.values())
            typer.echo(f"{name}: v{report.version} active, {total} values re-sealed, "
                       f"retired {', '.join(f'v{v}' for v in report.retired) or 'none'}")

    _with_keyring(main)


@keys_app.command("rewrap-data-keys")
def keys_rewrap_data_keys() -> None:
    """Wrap the data keys under the newest key encryption key of PAYPORTAL_DATA_KEYS."""
    from payportal.persistence.rotation import rewrap_data_keys

    async def main(engine: Any, keyring: Any) -> None:
        count = await rewrap_data_keys(engine, keyring)
        typer.echo(f"{count} data keys re-wrapped under key encryption key v{max(keyring.keks)}")

    _with_keyring(main)


@keys_app.command("check-sealed")
def keys_check_sealed() -> None:
    """Open every sealed value; name each row that does not open (exit 1 if any)."""
    from payportal.persistence.rotation import check_sealed

    failed = False

    async def main(engine: Any, keyring: Any) -> None:
        nonlocal failed
        report = await check_sealed(engine, keyring)
        for label, count in sorted(report.by_version.items()):
            typer.echo(f"{label}: {count}")
        for failure in report.failures:
            typer.echo(f"does not open: {failure}", err=True)
        typer.echo(f"{report.checked} sealed values checked, {len(report.failures)} failed")
        failed = bool(report.failures)

    _with_keyring(main)
    if failed:
        raise typer.Exit(1)


def _with_keyring(main: Callable[[Any, Any], Any]) -> None:
    """Run ``main(engine, keyring)`` on the configured database with its data keys."""
    import asyncio

    from payportal.persistence import create_engine_for, migrate
    from payportal.persistence.sealing import Keyring, SealingError

    settings = _settings()
    keks = settings.resolve_data_keys()
    migrate(settings.database_url)

    async def run() -> None:
        engine = create_engine_for(settings.database_url)
        try:
            await main(engine, await Keyring(keks).load(engine))
        finally:
            await engine.dispose()

    try:
        asyncio.run(run())
    except SealingError as error:
        _fail(str(error), 1)


@demo_app.command("seed")
def demo_seed() -> None:
    """Seed the demo merchant: accounts, invoices, a payer login."""
    settings = _settings()
    seed = _function("payportal.demo", "seed", "demo seed", "the demo data")
    seed(settings)


def _day(value: str | None, option: str) -> Any:
    import datetime as dt

    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        _fail(f"{option}: must be a date YYYY-MM-DD, got {value!r}", EXIT_SETTINGS)


@revenue_app.command("recognize")
def revenue_recognize(
    through: Annotated[
        str | None, typer.Option(help="Recognize through this past UTC day [default: yesterday].")
    ] = None,
) -> None:
    """Recognize every account's revenue through a past day (running it again posts nothing)."""
    settings = _settings()
    day = _day(through, "--through")
    recognize = _function("payportal.accounting.cli", "recognize_once", "revenue recognize",
                          "revenue recognition")  # fmt: skip
    _sqlite_directory_ensure(settings)
    try:
        recognize(settings, day)
    except ValueError as error:
        _fail(f"payportal revenue recognize: {error}", EXIT_SETTINGS)


@revenue_app.command("report")
def revenue_report(
    start: Annotated[str | None, typer.Option("--from", help="A day of the first month.")] = None,
    end: Annotated[str | None, typer.Option("--to", help="A day of the last month.")] = None,
) -> None:
    """Print recognized and deferred revenue by month of service as CSV, with its accuracy."""
    settings = _settings()
    first, last = _day(start, "--from"), _day(end, "--to")
    report = _function("payportal.accounting.cli", "report", "revenue report", "revenue reports")
    report(settings, first, last)


@app.command()
def reconcile() -> None:
    """Match settlement reports with payments, post fees and cash, queue mismatches."""
    settings = _settings()
    run_once = _function("payportal.accounting.cli", "reconcile_once", "reconcile",
                         "reconciliation")  # fmt: skip
    _sqlite_directory_ensure(settings)
    run_once(settings)


def _instant_ms(value: str, zone_name: str) -> int:
    """An ISO 8601 instant; without an offset it is read in the billing time zone (a bare
    date: its midnight there)."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ZoneInfo(zone_name))
    return int(parsed.timestamp() * 1000)


@billing_app.command("run")
def billing_run(
    now: Annotated[
        str | None,
        typer.Option(help="Bill as of this ISO 8601 instant or date (default: now); "
                     "without an offset, in PAYPORTAL_BILLING_TIMEZONE."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what is due; change nothing.")
    ] = False,
) -> None:  # fmt: skip
    """Invoice every due subscription period and charge autopay, once; print a summary."""
    settings = _settings()
    now_ms = None
    if now is not None:
        try:
            now_ms = _instant_ms(now, settings.billing_timezone)
        except ValueError:
            _fail(f"--now: must be an ISO 8601 date or time, got {now!r}", EXIT_SETTINGS)
    run_billing = _function("payportal.billing.cli", "run_billing", "billing run", "billing")
    _sqlite_directory_ensure(settings)
    typer.echo(run_billing(settings, now_ms=now_ms, dry_run=dry_run))


@app.command()
def version() -> None:
    """Print the installed version."""
    try:
        installed = distribution_version("payportal")
    except PackageNotFoundError:
        installed = "unknown (not installed; run make venv)"
    typer.echo(f"payportal {installed}")
