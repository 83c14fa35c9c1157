"""Metrics: Prometheus ``GET /metrics`` and the headline figures (``GET /v1/metrics/summary``).

Where each number comes from, and why:

- **Counted in each shard** (``_shard.ShardMetrics``; gathered from every shard actor at
  scrape time through its ``metrics_snapshot`` method, 1 s timeout): batch sizes, journal
  commit time, payments finished by terminal status, payment processing time (creation
  → first terminal status), retries started, journal events, accounts in memory. These
  happen inside the shards, and counting them there costs a list-index bump. Labelled
  ``shard`` (bounded by the shard count); ``payportal_shard_up`` is 0 for a shard that
  did not answer, whose series are then absent from that scrape.
- **Counted in each front-door process** (prometheus_client objects on the app's own
  ``CollectorRegistry``): HTTP requests and latency by route template (never the raw
  path), method and status; router queue depths. Labelled ``worker``.
- **Read from the database at scrape time, cached** ``DB_CACHE_S`` (5 s): payments by
  current status, the payment success ratio over the trailing 24 hours, and revenue
  recognition accuracy (``payportal.accounting``; it replays revenue events, so at most
  once a minute). These are facts about all payments, not about one process, so any
  process gives the same answer.

No metric has a per-account, per-payment or per-payer label.

Scraping several front-door processes: ``payportal serve --workers N`` runs N processes
on one port (``SO_REUSEPORT``), and a scrape reaches one of them. The shard and database
families are cluster-wide, so any process answers them fully. The per-process families
carry ``worker="<n>"``: each worker's series are distinct and monotonic, so
``sum by (route) (rate(payportal_http_requests_total[5m]))`` stays right as scrapes land
on different workers, each series merely updated less often (scrape at 5 s or so with
N workers). Behind a load balancer with one process per host, scrape every host.

``/metrics`` answers a merchant API key, like the rest of the merchant API; Prometheus
sends it with ``authorization: {type: Bearer, credentials_file: …}``. It honours
``Accept`` (Prometheus text or OpenMetrics).
"""

from ._figures import HeadlineFigures, headline_figures

__all__ = ["HeadlineFigures", "headline_figures"]
