"""The naive baseline — NOT PART OF PAYPORTAL.

A payment endpoint written the obvious way (aiohttp on uvloop, an asyncpg pool, one
transaction per payment with ``SELECT … FOR UPDATE`` on the account row), so the
end-to-end benchmark can say how payportal compares with what a straightforward server
on the same machine, database and processor achieves. It implements only what the
benchmark sends: ``POST /v1/payments`` with a saved payment method, ``GET
/v1/accounts/{id}``, ``GET /v1/payments/{id}``, and the processor's callback route.
Its schema (``schema.sql``) is its own. See ``README.md`` here.

    python -m benchmarks.naive --port 8091 --database-url postgresql://… \\
        --processor-url http://127.0.0.1:8081
"""
