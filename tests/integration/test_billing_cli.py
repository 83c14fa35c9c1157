"""`payportal billing run`: a dry run on a migrated SQLite database counts what is due as of
``--now`` (read in the billing time zone) and writes nothing; a malformed ``--now`` or
time zone stops with one line and exit 2. Driven in-process through Typer's CliRunner."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from payportal.billing import _service as service
from payportal.cli import app
from payportal.engine.billing_schedule import Interval
from payportal.persistence import create_engine_for, migrate
from payportal.persistence.tables_billing import billing_invoices


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("PAYPORTAL_"):
            monkeypatch.delenv(name)
    return CliRunner()


async def _seed(url: str) -> None:
    engine = create_engine_for(url)
    try:
        await service.create_plan(engine, plan_id="plan_m", name="Monthly", amount_minor=1_000,
                                  currency="USD", interval=Interval.month)  # fmt: skip
        for n, started in enumerate([dt.date(2028, 1, 31), dt.date(2028, 2, 15)]):
            created = await service.create_subscription(
                engine, subscription_id=f"sub_cli_{n}", account_id="acct_cli",
                account_currency="USD", plan_id="plan_m", payment_method_id=None,
                autopay=False, anchor_day=None, today=started,
            )  # fmt: skip
            assert not isinstance(created, service.BillingRejection)
    finally:
        await engine.dispose()


async def _claims(url: str) -> int:
    engine = create_engine_for(url)
    try:
        async with engine.connect() as connection:
            query = sa.select(sa.func.count()).select_from(billing_invoices)
            return int((await connection.execute(query)).scalar_one())
    finally:
        await engine.dispose()


def test_a_dry_run_counts_the_periods_due_as_of_now_and_writes_nothing(
    runner: CliRunner, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/billing.db"
    migrate(url)
    asyncio.run(_seed(url))
    env = {"PAYPORTAL_DATABASE_URL": url, "PAYPORTAL_BILLING_TIMEZONE": "America/New_York"}

    # 1 March 02:00 UTC is still 29 February in New York: two periods of the first
    # subscription (31 Jan, 29 Feb) and one of the second (15 Feb) are due.
    result = runner.invoke(app, ["billing", "run", "--dry-run", "--now",
                                 "2028-03-01T02:00:00+00:00"], env=env)  # fmt: skip

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        "dry run for 2028-02-29: 3 periods due on 2 subscriptions, 0 card reminders due; "
        "nothing was written"
    )
    assert asyncio.run(_claims(url)) == 0


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--now", "yesterday"], {}, "--now: must be an ISO 8601 date or time"),
        ([], {"PAYPORTAL_BILLING_TIMEZONE": "Mars/Olympus"}, "PAYPORTAL_BILLING_TIMEZONE"),
        ([], {"PAYPORTAL_BILLING_INTERVAL_S": "-1"}, "PAYPORTAL_BILLING_INTERVAL_S"),
    ],
)
def test_a_malformed_now_or_setting_stops_with_one_line_and_exit_2(
    runner: CliRunner, args: list[str], env: dict[str, str], message: str
) -> None:
    result = runner.invoke(app, ["billing", "run", "--dry-run", *args], env=env)

    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
