// Requests: the log, newest first, filtered and paginated; a row opens its details.
// Prompts and answers appear only when the gateway stores them (ledger.log_content).
"use strict";
(function (M) {
  const { h, fill, usd, num, ms, when, table, select, section } = M;
  const PAGE_ROWS = 50;
  const TEXT = ["user", "team", "feature", "model"];

  function statusTag(s) {
    return h("span", { class: "tag " + (s >= 400 ? "bad" : "ok") }, String(s));
  }

  function kv(pairs) {
    return h("dl", { class: "kv" }, pairs.filter(p => p[1] !== undefined).map(([k, v]) =>
      [h("dt", {}, k), h("dd", {}, v === null || v === "" ? "–" : v)]));
  }

  function detail(d) {
    const stageRows = Object.entries(d.stage_ms || {});
    const parts = [
      kv([["request id", d.request_id], ["time", when(d.ts)], ["endpoint", d.endpoint],
          ["model asked", d.requested_model], ["model served", d.model],
          ["provider", d.provider], ["route", d.route], ["status", String(d.status)],
          ["error", d.error_type], ["cache", d.cache],
          ["similarity", d.similarity === null ? null : num(d.similarity, 3)],
          ["user", d.user], ["team", d.team], ["feature", d.feature], ["key", d.key_id],
          ["prompt tokens", num(d.prompt_tokens)],
          ["completion tokens", num(d.completion_tokens)],
          ["cached tokens", num(d.cached_tokens)], ["cost", usd(d.cost_usd)],
          ["saved", usd(d.saved_usd)], ["latency", ms(d.latency_ms)],
          ["upstream", ms(d.upstream_ms)], ["overhead", ms(d.overhead_ms)],
          ["time to first token", ms(d.ttft_ms)], ["streamed", d.streamed ? "yes" : "no"],
          ["fallback", d.fallbacks ? `${d.fallbacks.from} → ${d.fallbacks.to}` : null]]),
      h("h3", {}, "Stage timings (own time)"),
      table([{ label: "stage", value: x => x[0] },
             { label: "ms", class: "num", value: x => ms(x[1]) }], stageRows,
            { empty: "none recorded" }),
      h("h3", {}, "Upstream attempts"),
      table([{ label: "#", value: x => x.i },
             { label: "detail", class: "wrap", value: x => JSON.stringify(x.a) }],
            (d.attempts || []).map((a, i) => ({ i: i + 1, a })), { empty: "none" })];
    if ("prompt" in d) {
      parts.push(h("h3", {}, "Prompt"), h("pre", { class: "content" },
        typeof d.prompt === "string" ? d.prompt : JSON.stringify(d.prompt, null, 2)));
      parts.push(h("h3", {}, "Answer"), h("pre", { class: "content" }, d.response || ""));
    } else {
      parts.push(h("p", { class: "muted" },
        "Prompts and answers are not stored (ledger.log_content is off)."));
    }
    return parts;
  }

  M.pages.requests = function (el) {
    const f = { since: "", status: "", cache: "" };
    let cursors = [null];          // cursor of each page seen so far; the last is shown
    let openId = null;
    const tableBox = h("div", { id: "requests-table" });
    const pager = h("div", { class: "pager" });
    const side = h("aside", { class: "detail", id: "request-detail", hidden: true });

    function changed() { cursors = [null]; M.refreshNow(); }
    const controls = h("form", { class: "controls", id: "requests-filters",
                                 onsubmit: ev => ev.preventDefault() },
      h("label", {}, "window ", select("since", [["", "all time"], ["1h", "last hour"],
        ["24h", "last 24 hours"], ["7d", "last 7 days"], ["30d", "last 30 days"]], f.since,
        ev => { f.since = ev.target.value; changed(); })),
      TEXT.map(name => h("input", { name, placeholder: name, class: "filter",
        "aria-label": "only this " + name,
        onchange: ev => { f[name] = ev.target.value.trim(); changed(); } })),
      h("label", {}, "status ", select("status", [["", "any"], ["ok", "ok"], ["error", "error"]],
        f.status, ev => { f.status = ev.target.value; changed(); })),
      h("label", {}, "cache ", select("cache", [["", "any"], ["miss", "miss"],
        ["exact", "exact"], ["semantic", "semantic"], ["bypass", "bypass"]], f.cache,
        ev => { f.cache = ev.target.value; changed(); })));
    fill(el, h("h1", {}, "Requests"), controls,
         h("div", { class: "split" }, h("div", {}, tableBox, pager), side));

    async function open(id) {
      openId = id;
      for (const tr of tableBox.querySelectorAll("tr[data-request-id]")) {
        tr.classList.toggle("selected", tr.dataset.requestId === id);
      }
      const d = await M.api.get("/admin/requests/" + encodeURIComponent(id));
      if (openId !== id) return;
      fill(side, h("div", { class: "detail-head" }, h("h2", {}, "Request"),
        h("button", { type: "button", class: "link", onclick: () => {
          openId = null; side.hidden = true; } }, "close")), detail(d));
      side.hidden = false;
    }

    function render(page) {
      const cols = [
        { label: "time", value: r => new Date(r.ts * 1000).toLocaleString("en-GB", {
            month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit",
            second: "2-digit" }) },
        { label: "user", value: r => r.user || "–" },
        { label: "team", value: r => r.team || "–" },
        { label: "feature", value: r => r.feature || "–" },
        { label: "model", value: r => r.model || "–" },
        { label: "status", value: r => statusTag(r.status) },
        { label: "cache", value: r => r.cache || "–" },
        { label: "tokens", class: "num",
          value: r => num((r.prompt_tokens || 0) + (r.completion_tokens || 0)) },
        { label: "cost", class: "num", value: r => usd(r.cost_usd) },
        { label: "latency", class: "num", value: r => ms(r.latency_ms) }];
      fill(tableBox, table(cols, page.rows, {
        class: "requests", empty: "No request matches these filters.",
        rowAttrs: r => ({ "data-request-id": r.request_id,
                          class: r.request_id === openId ? "selected" : null }),
        onRow: r => open(r.request_id).catch(M.showError) }));
      const n = cursors.length;
      fill(pager,
        h("button", { type: "button", disabled: n === 1, onclick: () => {
          cursors.pop(); M.refreshNow(); } }, "← newer"),
        h("span", { class: "muted" }, ` page ${n} `),
        h("button", { type: "button", disabled: !page.next_cursor, onclick: () => {
          cursors.push(page.next_cursor); M.refreshNow(); } }, "older →"));
    }

    let shown = null;  // the page shown, as JSON: an unchanged page is not redrawn
    return {
      refresh: async () => {
        const params = Object.assign({ limit: PAGE_ROWS }, f);
        const cursor = cursors[cursors.length - 1];
        if (cursor) params.cursor = cursor;
        const page = await M.api.get("/admin/requests", params);
        const text = JSON.stringify([page, cursors.length]);
        if (text === shown) return;
        shown = text;
        render(page);
      },
    };
  };
})(window.Margin);
