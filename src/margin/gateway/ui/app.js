// The console's shell: session and login, the page router (#overview, #spend, …) and the
// polling that refreshes the open page without a reload.
"use strict";
(function (M) {
  const $ = id => document.getElementById(id);
  const PAGES = ["overview", "spend", "budgets", "requests", "capacity", "keys", "anomalies"];
  let current = null;       // {name, view}
  let timer = null;
  let busy = null;          // the view whose refresh is in flight

  function showError(err) {
    const box = $("error");
    if (!err) { box.hidden = true; box.replaceChildren(); return; }
    M.fill(box, err.message || String(err));
    box.hidden = false;
  }
  M.showError = showError;

  async function refresh() {
    if (!current || busy === current.view || document.hidden) return;
    const view = current.view;
    busy = view;
    try {
      await view.refresh();
      if (current && current.view === view) {
        showError(null);
        $("updated").textContent = "updated " + new Date().toLocaleTimeString("en-GB");
      }
    } catch (err) {
      if (current && current.view === view
          && !(err instanceof M.api.ApiError && err.status === 401)) showError(err);
    } finally {
      if (busy === view) busy = null;
    }
  }
  M.refreshNow = refresh;

  function route() {
    const s = M.api.state.session;
    if (!s || !s.authenticated) return;
    let name = (location.hash || "#overview").slice(1).split("?")[0];
    if (!PAGES.includes(name) || (name === "keys" && s.role === "viewer")) name = "overview";
    for (const a of document.querySelectorAll("#nav a")) {
      a.classList.toggle("active", a.getAttribute("href") === "#" + name);
    }
    const el = $("page");
    el.replaceChildren();
    el.dataset.page = name;
    $("updated").textContent = "";
    current = { name, view: M.pages[name](el, s) };
    document.title = "margin · " + name;
    refresh();
  }

  function startPolling(s) {
    clearInterval(timer);
    timer = setInterval(refresh, Math.max(2, s.refresh_interval_s || 10) * 1000);
  }

  function showLogin(message) {
    clearInterval(timer);
    current = null;
    $("page").replaceChildren();
    $("nav").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    const e = $("login-error");
    e.hidden = !message;
    e.textContent = message || "";
    $("login-key").focus();
  }

  function enter(s) {
    $("login").hidden = true;
    $("nav").hidden = false;
    $("logout").hidden = s.mode !== "master_key";
    // A viewer key reads the pages; keys are for the master key and admin keys.
    document.querySelector('#nav a[href="#keys"]').hidden = s.role === "viewer";
    const banner = $("banner");
    if (s.mode === "open") {
      M.fill(banner, "No master key is set: this gateway is open to anyone who can reach it, ",
             "and this console answers loopback clients only. Set MARGIN_MASTER_KEY to ",
             "require keys.");
      banner.hidden = false;
    }
    startPolling(s);
    route();
  }

  M.onLoggedOut = () => {
    if (M.api.state.session) M.api.state.session.authenticated = false;
    showLogin("Your session ended; log in again.");
  };

  async function boot() {
    $("login-form").addEventListener("submit", async ev => {
      ev.preventDefault();
      const key = $("login-key").value;
      try {
        const s = await M.api.login(key);
        $("login-key").value = "";
        enter(s);
      } catch (err) {
        showLogin(err.message);
      }
    });
    $("logout").addEventListener("click", async () => {
      try { await M.api.logout(); } catch (err) { showError(err); return; }
      M.api.state.session.authenticated = false;
      M.api.state.session.csrf_token = null;
      showLogin(null);
    });
    window.addEventListener("hashchange", route);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
    let s;
    try {
      s = await M.api.session();
    } catch (err) {
      showError(err);
      return;
    }
    if (s.authenticated) enter(s); else showLogin(null);
  }

  document.addEventListener("DOMContentLoaded", boot);
})(window.Margin);
