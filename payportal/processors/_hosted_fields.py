"""The hosted card-fields page: the only place card data is typed in.

The portal embeds this page in an iframe, so the card number, expiry and CVC go from
the payer's browser to the processor's ``POST /v1/tokens`` and never through the
portal (docs/design.md 9). Like Stripe's Payment Element it has no button of its own:
the portal's Pay (or Save) button drives it, so typing the card and paying are one
action. The messages, all ``postMessage`` between this page and its parent:

- parent → page ``{type: "payportal.card_tokenize"}``: check the fields and ask the
  processor for a token;
- page → parent ``{type: "payportal.card_token", token, brand, last4, exp_month,
  exp_year}`` on success, or ``{type: "payportal.card_error", code, message, param}``
  on failure — the message is then also shown beside the field it is about, which is
  marked invalid and described by it;
- parent → page ``{type: "payportal.card_focus"}`` after it has focused the frame:
  focus that field (browsers do not let a cross-origin frame take focus by itself);
- page → parent ``{type: "payportal.card_submit"}`` when Enter is pressed in a field,
  so Enter pays as it would in a field of the parent's own form.

The parent's origin comes from the ``origin`` query parameter (read in the browser,
never echoed by the server), falling back to the referrer's origin: tokens go only to
that origin, and only a message from that origin and from the parent window itself
starts a tokenization. No external assets: one inline style and one inline script,
each allowed by a nonce.
"""

from __future__ import annotations

from string import Template
from typing import Final

__all__ = ["render_card_fields"]

# Colours: the portal's own (app.css), which meet WCAG AA contrast on white.
_PAGE: Final = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Card details</title>
<style nonce="$nonce">
body{font:16px/1.4 system-ui,sans-serif;margin:0;padding:4px 8px;color:#1f2328}
main{display:block}
label{display:block;margin:6px 0 2px;font-weight:600}
input{font:inherit;padding:6px;width:100%;box-sizing:border-box;min-height:44px;
  border:1px solid #8c959f;border-radius:6px}
input[aria-invalid="true"]{border:2px solid #a40e26}
input:focus-visible{outline:3px solid #bf4b00;outline-offset:1px}
.row{display:flex;gap:8px}.row>div{flex:1;min-width:0}
.error{color:#a40e26;font-weight:600;font-size:.9rem;margin:2px 0 0;min-height:1.2em}
</style>
</head>
<body>
<main>
<form id="card-form" novalidate>
  <label for="cc-number">Card number</label>
  <input id="cc-number" name="cc-number" autocomplete="cc-number" inputmode="numeric"
         maxlength="23" required aria-describedby="cc-number-error">
  <p class="error" id="cc-number-error"></p>
  <div class="row">
    <div>
      <label for="cc-exp">Expiry (MM / YY)</label>
      <input id="cc-exp" name="cc-exp" autocomplete="cc-exp" inputmode="numeric"
             placeholder="MM / YY" maxlength="7" required aria-describedby="cc-exp-error">
      <p class="error" id="cc-exp-error"></p>
    </div>
    <div>
      <label for="cc-csc">Security code</label>
      <input id="cc-csc" name="cc-csc" autocomplete="cc-csc" inputmode="numeric"
             maxlength="4" required aria-describedby="cc-csc-error">
      <p class="error" id="cc-csc-error"></p>
    </div>
  </div>
</form>
</main>
<script nonce="$nonce">
(function () {
  var params = new URLSearchParams(location.search);
  var target = params.get("origin") ||
    (document.referrer ? new URL(document.referrer).origin : location.origin);
  var form = document.getElementById("card-form");
  // The processor's error params, and the field each one is about.
  var FIELDS = {number: "cc-number", exp_month: "cc-exp", exp_year: "cc-exp", cvc: "cc-csc"};
  var busy = false;
  var invalid = null;
  function tell(message) { window.parent.postMessage(message, target); }
  function clear() {
    invalid = null;
    ["cc-number", "cc-exp", "cc-csc"].forEach(function (id) {
      document.getElementById(id).removeAttribute("aria-invalid");
      document.getElementById(id + "-error").textContent = "";
    });
  }
  function fail(code, message, param) {
    var id = FIELDS[param] || "cc-number";
    var field = document.getElementById(id);
    document.getElementById(id + "-error").textContent = message;
    field.setAttribute("aria-invalid", "true");
    invalid = field;
    tell({type: "payportal.card_error", code: code, message: message, param: param || null});
  }
  function tokenize() {
    if (busy) { return; }
    clear();
    var number = form["cc-number"].value.trim();
    var exp = form["cc-exp"].value.split("/");
    var month = parseInt((exp[0] || "").trim(), 10) || 0;
    var year = parseInt((exp[1] || "").trim(), 10) || 0;
    var cvc = form["cc-csc"].value.trim();
    // Empty fields are told here; everything else the processor checks.
    if (!number) { fail("incomplete_number", "Enter the card number.", "number"); return; }
    if (!month || !year) {
      fail("incomplete_expiry", "Enter the expiry date, like 12 / 35.", "exp_month");
      return;
    }
    if (!cvc) { fail("incomplete_cvc", "Enter the security code.", "cvc"); return; }
    busy = true;
    fetch("/v1/tokens", {method: "POST", headers: {"Content-Type": "application/json"},
                         body: JSON.stringify({type: "card", number: number, exp_month: month,
                                               exp_year: year < 100 ? 2000 + year : year,
                                               cvc: cvc})})
      .then(function (response) { return response.json(); })
      .then(function (reply) {
        busy = false;
        if (reply.error) { fail(reply.error.code, reply.error.message, reply.error.param); return; }
        form.reset();
        tell({type: "payportal.card_token", token: reply.token, brand: reply.brand,
              last4: reply.last4, exp_month: reply.exp_month, exp_year: reply.exp_year});
      })
      .catch(function () {
        busy = false;
        fail("processing_error", "The card could not be checked. Try again.", "number");
      });
  }
  window.addEventListener("message", function (event) {
    if (event.source !== window.parent || event.origin !== target || !event.data) { return; }
    if (event.data.type === "payportal.card_tokenize") { tokenize(); }
    // Browsers refuse focus to a cross-origin frame's own call; once the parent has
    // focused the frame, the field may take it.
    if (event.data.type === "payportal.card_focus" && invalid) { invalid.focus(); }
  });
  form.addEventListener("submit", function (event) { event.preventDefault(); });
  form.addEventListener("keydown", function (event) {
    if (event.key === "Enter") { event.preventDefault(); tell({type: "payportal.card_submit"}); }
  });
})();
</script>
</body>
</html>
""")


def render_card_fields(nonce: str) -> str:
    return _PAGE.substitute(nonce=nonce)
