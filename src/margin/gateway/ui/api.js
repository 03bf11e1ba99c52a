// Talking to the gateway: the session (cookie + CSRF token) and the /admin/ JSON API.
"use strict";
(function (M) {
  const state = { session: null };

  class ApiError extends Error {
    constructor(status, body) {
      const e = body && body.error ? body.error : {};
      super(e.message || `HTTP ${status}`);
      this.status = status;
      this.code = e.code || null;
    }
  }

  async function call(method, path, body) {
    const headers = { "Accept": "application/json" };
    const s = state.session;
    // Writes carry the session's CSRF token; the cookie itself goes along by the browser.
    if (method !== "GET" && s && s.csrf_token) headers["X-CSRF-Token"] = s.csrf_token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, { method, headers, credentials: "same-origin",
                                  cache: "no-store",
                                  body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!r.ok) {
      const err = new ApiError(r.status, data);
      if (r.status === 401 && M.onLoggedOut) M.onLoggedOut(err);
      throw err;
    }
    return data;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== null && v !== undefined && v !== "") q.set(k, v);
    }
    const s = q.toString();
    return s ? "?" + s : "";
  }

  M.api = {
    state, ApiError, query,
    get: (path, params) => call("GET", path + query(params)),
    post: (path, body) => call("POST", path, body === undefined ? {} : body),
    patch: (path, body) => call("PATCH", path, body),
    del: path => call("DELETE", path),
    session: async () => (state.session = await call("GET", "/ui/session")),
    login: async key => {
      const s = await call("POST", "/ui/login", { key });
      state.session = Object.assign({}, state.session || {}, s, { authenticated: true });
      return state.session;
    },
    logout: () => call("POST", "/ui/logout", {}),
  };
})(window.Margin);
