// Payment portal: small progressive enhancements; every page works without them except
// typing a new card, which lives in the processor's frame (or Stripe's Payment Element).
(function () {
  "use strict";

  function $(selector, root) { return (root || document).querySelector(selector); }
  function $all(selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); }
  function csrf() { var meta = $('meta[name="csrf-token"]'); return meta ? meta.content : ""; }

  // Decimal strings to integer minor units and back, without floats.
  function toMinor(text, decimals) {
    var clean = String(text).replace(/[\s,]/g, "");
    if (!/^\d+(\.\d+)?$/.test(clean)) { return null; }
    var parts = clean.split(".");
    var fraction = (parts[1] || "");
    if (fraction.length > decimals) { return null; }
    while (fraction.length < decimals) { fraction += "0"; }
    return parseInt(parts[0] + fraction, 10);
  }
  function fromMinor(minor, decimals) {
    var text = String(minor);
    if (decimals === 0) { return text; }
    while (text.length <= decimals) { text = "0" + text; }
    return text.slice(0, -decimals) + "." + text.slice(-decimals);
  }
  function decimalsOf(text) { var p = String(text).split("."); return p.length > 1 ? p[1].length : 0; }

  // -- card forms (pay page and methods page) ----------------------------------------------
  // Pay (or Save) is one action, as with Stripe's Payment Element: the button asks the
  // processor's own fields for a token, then submits the form with it. Card data stays in
  // the processor's frame; this page only ever holds the token and what may be printed.
  function setToken(form, data, walletName) {
    $("[data-token]", form).value = data.token;
    $("[data-brand]", form).value = data.brand || "";
    $("[data-last4]", form).value = data.last4 || "";
    $("[data-exp-month]", form).value = data.exp_month || "";
    $("[data-exp-year]", form).value = data.exp_year || "";
    var wallet = $("[data-wallet-name]", form);
    if (wallet) { wallet.value = walletName || ""; }
  }

  // Long enough for a slow processor, short enough that a lost frame is noticed.
  var TOKENIZE_TIMEOUT_MS = 20000;

  // The sandbox's hosted fields in an iframe, driven by postMessage
  // (processors/_hosted_fields.py). Returns tokenize() → Promise of the token's fields.
  function hostedFields(form, onSubmitRequest) {
    var frame = $("[data-card-frame]", form);
    if (!frame) { return null; }
    var processor = new URL(frame.src).origin;
    var pending = null;
    window.addEventListener("message", function (event) {
      if (event.origin !== processor || !event.data || event.source !== frame.contentWindow) { return; }
      var data = event.data;
      if (data.type === "payportal.card_submit") { onSubmitRequest(); return; }
      // Only the answer to a tokenize request settles it.
      if (!pending || (data.type !== "payportal.card_token" && data.type !== "payportal.card_error")) { return; }
      var settle = pending;
      pending = null;
      clearTimeout(settle.timer);
      if (data.type === "payportal.card_token") { settle.resolve(data); }
      else if (data.type === "payportal.card_error") {
        // The frame shows the message beside its field; the keyboard (and a screen
        // reader) goes there: first into the frame, then, inside it, to the field.
        frame.focus();
        frame.contentWindow.postMessage({type: "payportal.card_focus"}, processor);
        settle.reject(new Error(data.message || "Check the card details."));
      }
    });
    return function tokenize() {
      return new Promise(function (resolve, reject) {
        pending = {resolve: resolve, reject: reject, timer: setTimeout(function () {
          pending = null;
          reject(new Error("The secure card form did not answer. Try again."));
        }, TOKENIZE_TIMEOUT_MS)};
        frame.contentWindow.postMessage({type: "payportal.card_tokenize"}, processor);
      });
    };
  }

  // Stripe's Payment Element (when the portal runs on Stripe). Errors are shown by the
  // Element beside its own fields; the payment method it creates is the token.
  function paymentElement(form, amountMinor) {
    var mount = $("[data-stripe-element]", form);
    if (!mount || !window.Stripe) { return null; }
    var stripe = window.Stripe(mount.getAttribute("data-stripe-key"));
    var options = {mode: mount.getAttribute("data-mode") || "payment",
                   currency: mount.getAttribute("data-currency"),
                   paymentMethodCreation: "manual"};
    if (options.mode === "payment") { options.amount = amountMinor() || 1; }
    var elements = stripe.elements(options);
    elements.create("payment").mount(mount);
    form.addEventListener("input", function () {
      if (options.mode === "payment" && amountMinor()) { elements.update({amount: amountMinor()}); }
    });
    return function tokenize() {
      return elements.submit().then(function (checked) {
        if (checked.error) { throw new Error(checked.error.message); }
        return stripe.createPaymentMethod({elements: elements});
      }).then(function (created) {
        if (created.error) { throw new Error(created.error.message); }
        var card = created.paymentMethod.card || {};
        return {token: created.paymentMethod.id, brand: card.brand, last4: card.last4,
                exp_month: card.exp_month, exp_year: card.exp_year};
      });
    };
  }

  // needsCard(): whether this submission pays with a card still to be typed.
  function cardForm(form, needsCard, amountMinor) {
    var button = $("[data-card-submit]", form);
    var status = $("[data-card-status]", form);
    if (!button) { return; }
    var label = button.textContent;
    var sending = false;
    var tokenize = paymentElement(form, amountMinor) || hostedFields(form, function () {
      if (needsCard()) { button.click(); }
    });
    function busy(text) { button.disabled = true; button.textContent = text; }
    form.addEventListener("submit", function (event) {
      // A second click, or Enter pressed again, while the first is on its way.
      if (sending) { event.preventDefault(); return; }
      if (!needsCard()) {
        sending = true;
        setTimeout(function () { busy(button.getAttribute("data-busy-label") || label); }, 0);
        return;
      }
      event.preventDefault();
      if (!tokenize) {
        status.textContent = "The secure card form did not load. Reload the page and try again.";
        return;
      }
      sending = true;
      status.textContent = "";
      busy("Checking the card…");
      tokenize().then(function (data) {
        setToken(form, data, "");
        busy(button.getAttribute("data-busy-label") || label);
        form.submit();
      }, function (error) {
        sending = false;
        button.disabled = false;
        button.textContent = label;
        status.textContent = error.message;
      });
    });
  }

  // -- pay page ------------------------------------------------------------------------------
  function payPage(form) {
    var amount = $("#amount", form);
    var output = $("[data-preview-output]", form);
    var timer = null;
    var lastQuery = "";

    function chosenMethod() {
      var checked = $('input[name="method"]:checked', form);
      return checked ? checked.value : "";
    }
    function showMethod() {
      var method = chosenMethod();
      $all("[data-when-method]", form).forEach(function (section) {
        section.hidden = section.getAttribute("data-when-method") !== method;
      });
    }
    function render(reply) {
      output.textContent = "";
      if (reply.error) {
        var p = document.createElement("p");
        p.className = "field-error";
        p.textContent = reply.error.message;
        output.appendChild(p);
        return;
      }
      var list = document.createElement("ul");
      reply.allocations.forEach(function (a) {
        var item = document.createElement("li");
        item.textContent = a.number + ": " + a.amount_text;
        item.setAttribute("data-preview-invoice", a.number);
        list.appendChild(item);
      });
      if (reply.unapplied > 0) {
        var credit = document.createElement("li");
        credit.textContent = "Kept as credit: " + reply.unapplied_text;
        list.appendChild(credit);
      }
      output.appendChild(list);
    }
    function preview() {
      var params = new URLSearchParams();
      params.set("account", form.getAttribute("data-account"));
      params.set("amount", amount.value);
      $all('input[name="invoice"]:checked', form).forEach(function (box) { params.append("invoice", box.value); });
      var query = params.toString();
      if (query === lastQuery) { return; }
      lastQuery = query;
      fetch(form.getAttribute("data-preview") + "?" + query, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (response) { return response.json(); })
        .then(function (reply) { if (query === lastQuery) { render(reply); } })
        .catch(function () { /* the preview is a help, not a step */ });
    }
    function schedule() { clearTimeout(timer); timer = setTimeout(preview, 250); }
    function sumChosen() {
      var boxes = $all('input[name="invoice"]:checked', form);
      if (!boxes.length) { return; }
      var decimals = decimalsOf(boxes[0].getAttribute("data-remaining"));
      var total = 0;
      boxes.forEach(function (box) { total += toMinor(box.getAttribute("data-remaining"), decimals) || 0; });
      amount.value = fromMinor(total, decimals);
    }

    amount.addEventListener("input", schedule);
    $all('input[name="invoice"]', form).forEach(function (box) {
      box.addEventListener("change", function () { sumChosen(); schedule(); });
    });
    $all('input[name="method"]', form).forEach(function (radio) { radio.addEventListener("change", showMethod); });
    $all("[data-wallet]", form).forEach(function (button) {
      button.addEventListener("click", function () {
        var wallet = button.getAttribute("data-wallet");
        button.disabled = true;
        // The sandbox's stand-in for the device's wallet sheet: it returns a wallet token
        // for its test card. A real wallet hands the processor an encrypted token.
        fetch(button.getAttribute("data-processor") + "/v1/tokens", {
          method: "POST", headers: {"Content-Type": "application/json"},
          body: JSON.stringify({type: "wallet", wallet: wallet, card_number: "4242424242424242"})
        }).then(function (response) { return response.json(); }).then(function (reply) {
          if (reply.error) { throw new Error(reply.error.message); }
          setToken(form, reply, wallet);
          form.submit();
        }).catch(function () { button.disabled = false; });
      });
    });
    cardForm(form, function () { return chosenMethod() === "card"; }, function () {
      return toMinor(amount.value, parseInt(amount.getAttribute("data-decimals") || "2", 10));
    });
    showMethod();
    preview();
  }

  // -- payment status ------------------------------------------------------------------------
  // A change of status swaps in the server's own rendering of the status and receipt, in
  // place: the wording stays the server's, and a payer who just answered their bank inside
  // the challenge frame is not sent back to the top of a reloaded page.
  function liveStatus(section) {
    var heading = $("#challenge-heading", section);
    // Straight after Pay the bank's step is what the payer must do next: the next Tab
    // from the heading goes into the bank's frame.
    if (heading) { heading.focus(); }
    if (section.getAttribute("data-final") === "true") { return; }
    var current = section.getAttribute("data-status");
    var polling = null;
    var source = null;
    var refreshing = false;
    var again = false;
    function stop() {
      if (source) { source.close(); source = null; }
      if (polling) { clearInterval(polling); polling = null; }
    }
    function swap(html) {
      var doc = new DOMParser().parseFromString(html, "text/html");
      var fresh = doc.getElementById("live");
      if (!fresh) { throw new Error("no status in the page"); }
      var active = document.activeElement;
      var hadFocus = !!active && active !== section && section.contains(active);
      var line = $(".status-line", section);
      var freshLine = $(".status-line", fresh);
      // The status line is the live region: it stays, its words change, and a screen
      // reader announces them.
      if (line && freshLine) { line.innerHTML = freshLine.innerHTML; }
      Array.prototype.slice.call(section.children).forEach(function (child) {
        if (child !== line) { section.removeChild(child); }
      });
      Array.prototype.slice.call(fresh.children).forEach(function (child) {
        if (!child.classList.contains("status-line")) { section.appendChild(document.importNode(child, true)); }
      });
      section.setAttribute("data-status", fresh.getAttribute("data-status"));
      section.setAttribute("data-final", fresh.getAttribute("data-final"));
      var receipt = $("[data-receipt]");
      var freshReceipt = doc.querySelector("[data-receipt]");
      if (receipt && freshReceipt) { receipt.parentNode.replaceChild(document.importNode(freshReceipt, true), receipt); }
      current = fresh.getAttribute("data-status");
      var newHeading = $("#challenge-heading", section);
      // Focus was in what was just replaced (the bank's frame): keep it on the news.
      if (newHeading) { newHeading.focus(); } else if (hadFocus) { section.focus(); }
      if (fresh.getAttribute("data-final") === "true") { stop(); }
    }
    function refresh() {
      if (refreshing) { again = true; return; }
      refreshing = true;
      fetch(window.location.pathname, {credentials: "same-origin", headers: {"Accept": "text/html"}})
        .then(function (response) {
          if (!response.ok) { throw new Error("status " + response.status); }
          return response.text();
        })
        .then(swap)
        .catch(function () { window.location.reload(); })
        .then(function () {
          refreshing = false;
          if (again) { again = false; refresh(); }
        });
    }
    function changed(status) { if (status && status !== current) { refresh(); } }
    function poll() {
      if (polling) { return; }
      polling = setInterval(function () {
        fetch(section.getAttribute("data-poll"), {credentials: "same-origin"})
          .then(function (response) { return response.json(); })
          .then(function (reply) { changed(reply.status); })
          .catch(function () {});
      }, 2000);
    }
    if (!window.EventSource) { poll(); return; }
    source = new EventSource(section.getAttribute("data-events"));
    source.onmessage = function (event) {
      try { changed(JSON.parse(event.data).status); } catch (e) { /* ignore a bad event */ }
    };
    source.onerror = function () { if (source) { source.close(); source = null; } poll(); };
  }

  // Confirm starts a charge: one press is enough, a second waits for the first.
  function confirmForms() {
    document.addEventListener("submit", function (event) {
      var form = event.target;
      if (!form.matches || !form.matches("[data-confirm-form]")) { return; }
      if (form.getAttribute("data-sending")) { event.preventDefault(); return; }
      form.setAttribute("data-sending", "true");
      var button = $("button", form);
      setTimeout(function () { button.disabled = true; button.textContent = "Confirming…"; }, 0);
    });
  }

  // Dashboard: any payment's status change reloads the page (balance and list change).
  function liveAccount(section) {
    if (!window.EventSource) { return; }
    var source = new EventSource(section.getAttribute("data-events"));
    var timer = null;
    source.onmessage = function () {
      clearTimeout(timer);
      timer = setTimeout(function () { window.location.reload(); }, 300);
    };
    source.onerror = function () { source.close(); };
  }

  document.addEventListener("DOMContentLoaded", function () {
    var account = $("[data-live-account]");
    if (account) { liveAccount(account); }
    var pay = $("#pay-form");
    if (pay) { payPage(pay); }
    var add = $("#add-method-form");
    if (add) { cardForm(add, function () { return true; }, function () { return 0; }); }
    var live = $("[data-live]");
    if (live) { liveStatus(live); }
    confirmForms();
    window.payportalCsrf = csrf;
  });
})();
