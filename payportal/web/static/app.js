// Payment portal: small progressive enhancements; every page works without them except
// typing a new card, which lives in the processor's iframe.
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

  // -- card fields (pay page and methods page) ---------------------------------------------
  function setToken(form, data, walletName) {
    $("[data-token]", form).value = data.token;
    $("[data-brand]", form).value = data.brand || "";
    $("[data-last4]", form).value = data.last4 || "";
    $("[data-exp-month]", form).value = data.exp_month || "";
    $("[data-exp-year]", form).value = data.exp_year || "";
    var wallet = $("[data-wallet-name]", form);
    if (wallet) { wallet.value = walletName || ""; }
  }

  function cardFields(form) {
    var frame = $("[data-card-frame]", form);
    if (!frame) { return; }
    var processor = new URL(frame.src).origin;
    var ready = $("[data-card-ready]", form);
    window.addEventListener("message", function (event) {
      if (event.origin !== processor || !event.data || event.source !== frame.contentWindow) { return; }
      if (event.data.type === "payportal.card_token") {
        setToken(form, event.data, "");
        var brand = (event.data.brand || "card").replace(/^./, function (c) { return c.toUpperCase(); });
        ready.textContent = brand + " ending in " + event.data.last4 + " is ready.";
        if (form.hasAttribute("data-auto-submit-token")) { form.submit(); return; }
        var pay = $("#pay-button", form);
        if (pay) { pay.focus(); }
      } else if (event.data.type === "payportal.card_error") {
        ready.textContent = "";
      }
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
    form.addEventListener("submit", function (event) {
      var method = chosenMethod();
      if (method === "card" && !$("[data-token]", form).value) {
        event.preventDefault();
        var ready = $("[data-card-ready]", form);
        ready.textContent = "Enter your card in the secure form and choose “Use this card” first.";
        return;
      }
      var button = $("#pay-button", form);
      // One submission per page: the idempotency key makes a second harmless anyway.
      setTimeout(function () { button.disabled = true; button.textContent = "Paying…"; }, 0);
    });
    showMethod();
    preview();
  }

  // -- payment status ------------------------------------------------------------------------
  function liveStatus(section) {
    if (section.getAttribute("data-final") === "true") { return; }
    var current = section.getAttribute("data-status");
    var polling = null;
    function changed(status) { if (status && status !== current) { window.location.reload(); } }
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
    var source = new EventSource(section.getAttribute("data-events"));
    source.onmessage = function (event) {
      try { changed(JSON.parse(event.data).status); } catch (e) { /* ignore a bad event */ }
    };
    source.onerror = function () { source.close(); poll(); };
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
    if (pay) { cardFields(pay); payPage(pay); }
    var add = $("#add-method-form");
    if (add) { cardFields(add); }
    var live = $("[data-live]");
    if (live) { liveStatus(live); }
    window.payportalCsrf = csrf;
  });
})();
