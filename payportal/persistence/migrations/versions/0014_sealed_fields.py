"""Sensitive fields sealed at rest: data keys, blind indexes, and existing rows encrypted.

Creates ``data_keys`` (data keys wrapped by the key encryption keys of
``PAYPORTAL_DATA_KEYS``) and ``account_search_terms`` (the console's search, by blind
index). Widens the sealed columns to text, replaces the unique email of ``payers`` by a
unique blind index, and seals what an existing database holds in clear: payment method
tokens, payers' and accounts' emails and names, rendered emails in the outbox and stored
idempotent responses (``payportal.persistence.sealing``). A database with such rows
needs the key encryption keys to migrate; a new one does not (its data keys are made
when it is first opened). Downgrade opens everything again, in clear.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Lightweight tables: plain text columns, so values pass through as written here.
_payers = sa.table("payers", sa.column("id", sa.String), sa.column("email", sa.Text),
                   sa.column("email_index", sa.String))  # fmt: skip
_methods = sa.table("payment_methods", sa.column("id", sa.String), sa.column("token", sa.Text))
_profiles = sa.table("account_profiles", sa.column("account_id", sa.String),
                     sa.column("name", sa.Text), sa.column("email", sa.Text))  # fmt: skip
_terms = sa.table("account_search_terms", sa.column("term", sa.String),
                  sa.column("account_id", sa.String))  # fmt: skip
_outbox = sa.table("outbox", sa.column("id", sa.BigInteger), sa.column("kind", sa.String),
                   sa.column("payload", sa.LargeBinary))  # fmt: skip
_responses = sa.table("idempotency_records", sa.column("id", sa.BigInteger),
                      sa.column("response_body", sa.LargeBinary))  # fmt: skip


def _keyring(connection: sa.Connection) -> Any:
    from payportal.persistence.sealing import (
        SETTING,
        Keyring,
        SealingError,
        keks_from_environment,
        read_keks,
    )

    configured = context.config.attributes.get("data_keys")
    keks = read_keks(configured) if isinstance(configured, str) else configured
    keks = keks or keks_from_environment()
    if not keks:
        raise SealingError(
            f"this database holds rows to encrypt: set {SETTING} (see the README) and migrate again"
        )
    return Keyring(keks).load_sync(connection)


def _has_rows(connection: sa.Connection) -> bool:
    for table in ("payers", "payment_methods", "account_profiles", "outbox",
                  "idempotency_records"):  # fmt: skip
        if connection.execute(sa.select(sa.literal(1)).select_from(sa.table(table)).limit(1)
                              ).first() is not None:  # fmt: skip
            return True
    return False


def _seal_existing(connection: sa.Connection) -> None:
    from payportal.persistence.sealing import search_terms

    keyring = _keyring(connection)
    for row in connection.execute(sa.select(_payers.c.id, _payers.c.email)).all():
        email = row.email.strip().lower()
        connection.execute(sa.update(_payers).where(_payers.c.id == row.id).values(
            email=keyring.seal("contact", "payers.email", email),
            email_index=keyring.blind_index("payers.email", email),
        ))  # fmt: skip
    for row in connection.execute(sa.select(_methods.c.id, _methods.c.token)).all():
        connection.execute(sa.update(_methods).where(_methods.c.id == row.id).values(
            token=keyring.seal("token", "payment_methods.token", row.token)))  # fmt: skip
    for row in connection.execute(sa.select(_profiles)).all():
        connection.execute(sa.update(_profiles).where(
            _profiles.c.account_id == row.account_id).values(
            name=keyring.seal("contact", "account_profiles.name", row.name),
            email=keyring.seal("contact", "account_profiles.email", row.email),
        ))  # fmt: skip
        for term in search_terms(row.name, row.email):
            connection.execute(sa.insert(_terms).values(
                term=keyring.blind_index("account.term", term), account_id=row.account_id))
    emails = sa.select(_outbox.c.id, _outbox.c.payload).where(_outbox.c.kind == "email")
    for row in connection.execute(emails).all():
        connection.execute(sa.update(_outbox).where(_outbox.c.id == row.id).values(
            payload=keyring.seal("message", "outbox.payload", bytes(row.payload)).encode()))
    stored = sa.select(_responses.c.id, _responses.c.response_body).where(
        _responses.c.response_body.is_not(None))
    for row in connection.execute(stored).all():
        connection.execute(sa.update(_responses).where(_responses.c.id == row.id).values(
            response_body=keyring.seal(
                "response", "idempotency_records.response_body", bytes(row.response_body)
            ).encode()))  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "data_keys",
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("kek_version", sa.Integer, nullable=False),
        sa.Column("wrapped", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("purpose", "version", name=op.f("pk_data_keys")),
    )
    op.create_table(
        "account_search_terms",
        sa.Column("term", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("term", "account_id", name=op.f("pk_account_search_terms")),
    )
    op.create_index(op.f("ix_account_search_terms_account_id"), "account_search_terms",
                    ["account_id"])  # fmt: skip
    with op.batch_alter_table("payers") as batch:
        batch.add_column(sa.Column("email_index", sa.String(64), nullable=True))
        batch.drop_constraint("uq_payers_email", type_="unique")
        batch.alter_column("email", type_=sa.Text, existing_nullable=False)
    with op.batch_alter_table("payment_methods") as batch:
        batch.alter_column("token", type_=sa.Text, existing_nullable=False)
    with op.batch_alter_table("account_profiles") as batch:
        batch.alter_column("name", type_=sa.Text, existing_nullable=False)
        batch.alter_column("email", type_=sa.Text, existing_nullable=False)
    connection = op.get_bind()
    if _has_rows(connection):
        _seal_existing(connection)
    with op.batch_alter_table("payers") as batch:
        batch.alter_column("email_index", existing_type=sa.String(64), nullable=False)
        batch.create_unique_constraint("uq_payers_email_index", ["email_index"])


def _open_existing(connection: sa.Connection) -> None:
    keyring = _keyring(connection)
    for row in connection.execute(sa.select(_payers.c.id, _payers.c.email)).all():
        connection.execute(sa.update(_payers).where(_payers.c.id == row.id).values(
            email=keyring.open_text("payers.email", row.email)))
    for row in connection.execute(sa.select(_methods.c.id, _methods.c.token)).all():
        connection.execute(sa.update(_methods).where(_methods.c.id == row.id).values(
            token=keyring.open_text("payment_methods.token", row.token)))
    for row in connection.execute(sa.select(_profiles)).all():
        connection.execute(sa.update(_profiles).where(
            _profiles.c.account_id == row.account_id).values(
            name=keyring.open_text("account_profiles.name", row.name),
            email=keyring.open_text("account_profiles.email", row.email),
        ))  # fmt: skip
    emails = sa.select(_outbox.c.id, _outbox.c.payload).where(_outbox.c.kind == "email")
    for row in connection.execute(emails).all():
        connection.execute(sa.update(_outbox).where(_outbox.c.id == row.id).values(
            payload=keyring.open("outbox.payload", bytes(row.payload).decode())))
    stored = sa.select(_responses.c.id, _responses.c.response_body).where(
        _responses.c.response_body.is_not(None))
    for row in connection.execute(stored).all():
        connection.execute(sa.update(_responses).where(_responses.c.id == row.id).values(
            response_body=keyring.open("idempotency_records.response_body",
                                       bytes(row.response_body).decode())))  # fmt: skip


def downgrade() -> None:
    connection = op.get_bind()
    if _has_rows(connection):
        _open_existing(connection)
    with op.batch_alter_table("account_profiles") as batch:
        batch.alter_column("name", type_=sa.String(200), existing_nullable=False)
        batch.alter_column("email", type_=sa.String(320), existing_nullable=False)
    with op.batch_alter_table("payment_methods") as batch:
        batch.alter_column("token", type_=sa.String(255), existing_nullable=False)
    with op.batch_alter_table("payers") as batch:
        batch.drop_constraint("uq_payers_email_index", type_="unique")
        batch.drop_column("email_index")
        batch.alter_column("email", type_=sa.String(320), existing_nullable=False)
        batch.create_unique_constraint("uq_payers_email", ["email"])
    op.drop_index(op.f("ix_account_search_terms_account_id"), "account_search_terms")
    op.drop_table("account_search_terms")
    op.drop_table("data_keys")
