"""``python -m payportal`` is the ``payportal`` command."""

from payportal.cli import app

# Guarded: front-door worker processes are spawned and re-import the main module.
if __name__ == "__main__":
    app(prog_name="payportal")
