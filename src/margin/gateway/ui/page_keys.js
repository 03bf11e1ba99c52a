// Keys (admin): list, create (the secret is shown once), revoke, edit limits and budgets,
// through /admin/keys.
"use strict";
(function (M) {
  const { h, fill, usd, num, when, table, select, section } = M;
  const PERIODS = [["", "none"], ["day", "day"], ["week", "week"], ["month", "month"]];
  const ROLES = [["user", "user: models only"], ["viewer", "viewer: + reads the console"],
                 ["admin", "admin: + manages keys"]];
  // [field, label, kind]; kind: text, int, usd, list, period
  const FIELDS = [["name", "name", "text"], ["user", "user", "text"], ["team", "team", "text"],
                  ["models", "models (comma-separated; empty: all)", "list"],
                  ["rpm", "requests/min", "int"], ["tpm", "tokens/min", "int"],
                  ["budget_usd", "budget (USD)", "usd"], ["budget_period", "budget period", "period"],
                  ["role", "role", "role"]];

  function input(field, kind, value) {
    if (kind === "period") return select(field, PERIODS, value || "", null);
    if (kind === "role") return select(field, ROLES, value || "user", null);
    const v = value === null || value === undefined ? "" : Array.isArray(value) ? value.join(", ")
      : String(value);
    return h("input", { name: field, value: v, type: kind === "int" || kind === "usd" ? "number" : "text",
                        step: kind === "usd" ? "any" : kind === "int" ? "1" : null,
                        min: kind === "int" ? "1" : kind === "usd" ? "0" : null });
  }

  function read(form, kind, field) {
    const raw = form.elements[field].value.trim();
    if (raw === "") return null;
    if (kind === "int") return parseInt(raw, 10);
    if (kind === "usd") return parseFloat(raw);
    if (kind === "list") return raw.split(",").map(s => s.trim()).filter(Boolean);
    return raw;
  }

  function form(id, key, submitLabel, onsubmit) {
    const f = h("form", { class: "key-form", id },
      FIELDS.map(([field, label, kind]) => h("label", {}, h("span", {}, label),
        input(field, kind, key ? key[field] : null))),
      key ? null : h("label", {}, h("span", {}, "expires (30d, ISO date; empty: never)"),
                     h("input", { name: "expires", type: "text" })),
      h("div", { class: "form-actions" }, h("button", { type: "submit" }, submitLabel)));
    f.addEventListener("submit", ev => { ev.preventDefault(); onsubmit(f).catch(M.showError); });
    return f;
  }

  M.pages.keys = function (el, session) {
    if (!session.keys) {
      fill(el, h("h1", {}, "Keys"), h("p", { class: "muted" },
        "API keys need a master key: set MARGIN_MASTER_KEY and restart the gateway."));
      return { refresh: async () => {} };
    }
    let showRevoked = false;
    const list = h("div", { id: "keys-list" });
    const secret = h("div", { id: "new-key", class: "secret", hidden: true });
    const editor = h("div", { id: "key-editor" });

    async function create(f) {
      const body = {};
      for (const [field, , kind] of FIELDS) {
        const v = read(f, kind, field);
        if (v !== null) body[field] = v;
      }
      const exp = f.elements.expires.value.trim();
      if (exp) body.expires = exp;
      const k = await M.api.post("/admin/keys", body);
      f.reset();
      fill(secret, h("strong", {}, "New key for " + (k.user || "") + " — copy it now, it is "
                     + "shown only this once:"),
           h("code", { id: "new-key-secret", "data-key-id": k.id }, k.key),
           h("button", { type: "button", class: "link", onclick: () => {
             secret.hidden = true; secret.replaceChildren(); } }, "done"));
      secret.hidden = false;
      await M.refreshNow();
    }

    function edit(k) {
      fill(editor, section("Edit key " + k.id,
        form("key-edit-form", k, "Save", async f => {
          const changes = {};
          for (const [field, , kind] of FIELDS) {
            const v = read(f, kind, field);
            const before = Array.isArray(k[field]) ? k[field] : k[field] === undefined ? null : k[field];
            if (JSON.stringify(v) !== JSON.stringify(before)) changes[field] = v;
          }
          if (Object.keys(changes).length) await M.api.patch("/admin/keys/" + k.id, changes);
          editor.replaceChildren();
          await M.refreshNow();
        }),
        h("button", { type: "button", class: "link", onclick: () => editor.replaceChildren() },
          "cancel")));
      editor.scrollIntoView({ block: "nearest" });
    }

    async function revoke(k) {
      if (!window.confirm(`Revoke key ${k.id} (${k.user || "no user"})? It stops working at once.`)) return;
      await M.api.del("/admin/keys/" + k.id);
      await M.refreshNow();
    }

    const toggle = h("label", { class: "inline" }, h("input", { type: "checkbox", onchange: ev => {
      showRevoked = ev.target.checked; M.refreshNow(); } }), " show revoked keys");
    fill(el, h("h1", {}, "Keys"), secret, editor,
         section("Create a key", form("key-create-form", null, "Create key", create)),
         section("Keys", toggle, list));

    function render(keys) {
      fill(list, table([
        { label: "id", value: k => h("code", {}, k.id) },
        { label: "name", value: k => k.name || "–" },
        { label: "user", value: k => k.user || "–" },
        { label: "team", value: k => k.team || "–" },
        { label: "role", value: k => k.role || "user" },
        { label: "models", value: k => k.models ? k.models.join(", ") : "all" },
        { label: "rpm", class: "num", value: k => num(k.rpm) },
        { label: "tpm", class: "num", value: k => num(k.tpm) },
        { label: "budget", class: "num", value: k => k.budget_usd === null ? "–"
            : usd(k.budget_usd) + (k.budget_period ? " / " + k.budget_period : "") },
        { label: "expires", value: k => k.expires_at ? when(k.expires_at) : "never" },
        { label: "status", value: k => h("span", { class: "tag " + (k.status === "active" ? "ok" : "bad") }, k.status) },
        { label: "", value: k => k.status === "revoked" ? "" : h("span", { class: "actions" },
            h("button", { type: "button", class: "link", "data-action": "edit",
                          onclick: () => edit(k) }, "edit"),
            h("button", { type: "button", class: "link danger", "data-action": "revoke",
                          onclick: () => revoke(k).catch(M.showError) }, "revoke")) }],
        keys, { class: "keys", empty: "No keys yet.", rowAttrs: k => ({ "data-key-id": k.id }) }));
    }

    let shown = null;  // what the list shows, as JSON: an unchanged list is not redrawn
    return {
      refresh: async () => {
        const d = await M.api.get("/admin/keys", showRevoked ? { all: "1" } : {});
        const text = JSON.stringify(d.data);
        if (text === shown) return;
        shown = text;
        render(d.data);
      },
    };
  };
})(window.Margin);
