"""The hosted card-fields page: the only place card data is typed in.

The portal embeds this page in an iframe, so the card number, expiry and CVC go from
the payer's browser to the processor's ``POST /v1/tokens`` and never through the
portal (docs/design.md 9). On success the page posts ``{type: "payportal.card_token",
token, brand, last4, exp_month, exp_year}`` to the parent window; on failure
``{type: "payportal.card_error", code, message, param}``. The parent's origin comes
from the ``origin`` query parameter (read in the browser, never echoed by the server),
falling back to the referrer's origin, so the token goes only to the page that asked.
No external assets: one inline style and one inline script, each allowed by a nonce.
"""

from __future__ import annotations

from string import Template
from typing import Final

__all__ = ["render_card_fields"]

_PAGE: Final = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Card details</title>
<style nonce="$nonce">
body{font:16px system-ui,sans-serif;margin:0;padding:8px}
label{display:block;margin:8px 0 2px}
input{font:inherit;padding:6px;width:100%;box-sizing:border-box}
.row{display:flex;gap:8px}.row>div{flex:1}
#error{color:#b00020;min-height:1.2em;margin-top:6px}
button{font:inherit;margin-top:10px;padding:6px 14px}
</style>
</head>
<body>
<form id="card-form" novalidate>
  <label for="cc-number">Card number</label>
  <input id="cc-number" name="cc-number" autocomplete="cc-number" inputmode="numeric"
         maxlength="23" required aria-describedby="error">
  <div class="row">
    <div>
      <label for="cc-exp">Expiry (MM / YY)</label>
      <input id="cc-exp" name="cc-exp" autocomplete="cc-exp" inputmode="numeric"
             placeholder="MM / YY" maxlength="7" required aria-describedby="error">
    </div>
    <div>
      <label for="cc-csc">Security code</label>
      <input id="cc-csc" name="cc-csc" autocomplete="cc-csc" inputmode="numeric"
             maxlength="4" required aria-describedby="error">
    </div>
  </div>
  <div id="error" role="alert" aria-live="polite"></div>
  <button type="submit">Use this card</button>
</form>
<script nonce="$nonce">
(function () {
  var params = new URLSearchParams(location.search);
  var target = params.get("origin") ||
    (document.referrer ? new URL(document.referrer).origin : location.origin);
  var form = document.getElementById("card-form");
  var error = document.getElementById("error");
  function tell(message) { window.parent.postMessage(message, target); }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    error.textContent = "";
    var exp = form["cc-exp"].value.split("/");
    var year = parseInt((exp[1] || "").trim(), 10);
    var body = {
      type: "card",
      number: form["cc-number"].value,
      exp_month: parseInt((exp[0] || "").trim(), 10) || 0,
      exp_year: year < 100 ? 2000 + year : (year || 0),
      cvc: form["cc-csc"].value.trim()
    };
    fetch("/v1/tokens", {method: "POST", headers: {"Content-Type": "application/json"},
                     body: JSON.stringify(body)})
      .then(function (response) { return response.json(); })
      .then(function (reply) {
        if (reply.error) {
          error.textContent = reply.error.message;
          tell({type: "payportal.card_error", code: reply.error.code,
                message: reply.error.message, param: reply.error.param || null});
          return;
        }
        form.reset();
        tell({type: "payportal.card_token", token: reply.token, brand: reply.brand,
              last4: reply.last4, exp_month: reply.exp_month, exp_year: reply.exp_year});
      })
      .catch(function () { error.textContent = "The card could not be checked. Try again."; });
  });
})();
</script>
</body>
</html>
""")


def render_card_fields(nonce: str) -> str:
    return _PAGE.substitute(nonce=nonce)
