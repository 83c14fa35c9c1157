"""Durable storage under the account shards: journal, checkpoints, read models, migrations.

``Store`` is the one object the shards use: ``commit`` a batch of account changes in
one transaction, ``load_account`` to recover an account, ``journal`` to audit. SQLite
(WAL, in ``./var/``) by default, PostgreSQL by URL; nothing connects at import time.
"""

# Registers the front door's tables on the shared metadata, so migrations and their test
# see one schema whichever module is imported first.
from . import tables_accounting as _tables_accounting  # noqa: F401
from . import tables_billing as _tables_billing  # noqa: F401
from . import tables_payers as _tables_payers  # noqa: F401
from . import tables_portal as _tables_portal  # noqa: F401
from . import tables_status as _tables_status  # noqa: F401
from ._engine import create_engine_for
from ._migrate import alembic_config, migrate
from ._rows import AccountChange
from ._store import Store
from .keys import create_api_key, verify_api_key

__all__ = [
    "AccountChange",
    "Store",
    "alembic_config",
    "create_api_key",
    "create_engine_for",
    "migrate",
    "verify_api_key",
]
