"""An automated WCAG 2.2 AA audit of a page with axe-core (``vendor/axe.min.js``, see
``README.md`` here), for the browser tests.

``install(context)`` makes axe part of every document the context loads, in every frame;
``Audit.check(page, label)`` runs it on the page as it is and keeps the serious and
critical violations; ``Audit.assert_clean()`` fails with a readable list of them (rule,
what it asks, the elements, the rule's help page), every page's at once.

Why an init script: Playwright evaluates it through the browser's debugging protocol in
every frame before the frame's own scripts, so the pages' nonce-only CSP neither blocks
axe nor has to be switched off. ``bypass_csp=True`` would have audited pages without
their CSP, which is not the page a payer gets (a style the CSP blocks changes contrast).
And axe is then in the processor's cross-origin card-fields frame as well, so ``axe.run``
audits the frame inside the pay page too (axe asks each frame's own copy, once allowed
to talk across the two origins).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

AXE_JS: Final = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
# WCAG 2.0, 2.1 and 2.2, levels A and AA (2.2 added no level A rule axe checks).
TAGS: Final = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa")
# What the issue asks the pages to be free of; "moderate" and "minor" are reported too.
FAILING: Final = frozenset({"serious", "critical"})

# frame-tested (not a WCAG rule, so named on its own): a frame axe could not reach was
# not audited, which must not pass for clean.
_RUN: Final = """async tags => {
  const results = await axe.run(document, {
    runOnly: {type: "tag", values: tags}, rules: {"frame-tested": {enabled: true}},
    resultTypes: ["violations"],
  });
  const unreached = results.incomplete.filter(v => v.id === "frame-tested");
  return results.violations.concat(unreached).map(v => ({
    id: v.id, impact: v.id === "frame-tested" ? "critical" : v.impact,
    help: v.help, helpUrl: v.helpUrl,
    targets: v.nodes.map(n => n.target.flat().join(" >>> ")),
  }));
}"""


def install(context: Any, origins: list[str]) -> None:
    """axe in every frame ``context`` loads; its frames answer one another across
    ``origins`` (axe's own default is the same origin only, which would leave the
    processor's card-fields frame unaudited: rule ``frame-tested``, incomplete)."""
    context.add_init_script(path=str(AXE_JS))
    context.add_init_script(script=f"axe.configure({{allowedOrigins: {json.dumps(origins)}}});")


class Audit:
    """Every check's findings, kept until ``assert_clean``."""

    def __init__(self) -> None:
        self.failing: list[str] = []
        self.other: list[str] = []
        self.checked: list[str] = []

    def check(self, page: Any, label: str) -> None:
        width = page.viewport_size["width"] if page.viewport_size else 0
        where = f"{label} at {width}px ({page.url})"
        self.checked.append(where)
        for v in page.evaluate(_RUN, list(TAGS)):
            line = (f"{where}: {v['impact']} {v['id']}: {v['help']}\n"
                    f"    {', '.join(v['targets'][:8])}\n    {v['helpUrl']}")  # fmt: skip
            (self.failing if v["impact"] in FAILING else self.other).append(line)

    def assert_clean(self) -> None:
        assert self.checked, "nothing was audited"
        if self.failing:
            raise AssertionError(
                f"{len(self.failing)} serious or critical WCAG 2.2 AA violations "
                f"(axe-core):\n" + "\n".join(self.failing)
            )
