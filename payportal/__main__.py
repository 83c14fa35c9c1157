"""``python -m payportal`` is the ``payportal`` command."""

from payportal.cli import app

app(prog_name="payportal")
