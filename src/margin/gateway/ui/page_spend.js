// Spend: cost per user, team, feature, model or key over time (stacked), totals, the
// Pareto curve of users and the users that look like bots.
"use strict";
(function (M) {
  const { h, fill, usd, num, pct, table, select, section } = M;
  const BY = [["user", "user"], ["team", "team"], ["feature", "feature"], ["model", "model"],
              ["key", "key"]];
  const RANGES = [["24h", "last 24 hours"], ["7d", "last 7 days"], ["30d", "last 30 days"],
                  ["90d", "last 90 days"]];
  const FILTERS = ["user", "team", "feature", "model"];

  M.pages.spend = function (el) {
    const p = { by: "team", since: "7d", bucket: "day" };
    const filters = {};
    const body = h("div", { id: "spend-body" });
    const inputs = FILTERS.map(name => h("input", {
      name, placeholder: name, class: "filter", "aria-label": "only this " + name,
      onchange: ev => { filters[name] = ev.target.value.trim(); M.refreshNow(); } }));
    const controls = h("form", { class: "controls", onsubmit: ev => ev.preventDefault() },
      h("label", {}, "by ", select("by", BY, p.by, ev => { p.by = ev.target.value; M.refreshNow(); })),
      h("label", {}, "window ", select("since", RANGES, p.since, ev => {
        p.since = ev.target.value;
        p.bucket = p.since === "24h" ? "hour" : "day";
        M.refreshNow();
      })),
      inputs);
    fill(el, h("h1", {}, "Spend"), controls, body);

    function render(d) {
      const names = d.totals.slice(0, 10).map(t => t.group)
        .concat(d.series.some(x => "other" in x.values) ? ["other"] : []);
      const over = section(`Cost per ${d.by}, per ${d.bucket}`,
        M.chart.stackedBars(d.series, names, { bucket_s: d.bucket === "hour" ? 3600 : 86400,
          fmtX: d.bucket === "hour" ? t => new Date(t * 1000).toLocaleTimeString("en-GB",
            { hour: "2-digit", minute: "2-digit" }) : M.day,
          label: "cost per " + d.bucket }));
      const total = d.totals.reduce((a, t) => a + t.cost_usd, 0);
      const totals = section(`Totals per ${d.by}`,
        h("p", { class: "muted" }, `${num(d.totals.length)} groups, `,
          h("span", { "data-metric": "spend_total_usd", "data-value": String(total),
                      "data-since": String(d.since_s), "data-until": String(d.until_s) },
            usd(total)),
          " in all"),
        table([{ label: d.by, value: t => t.group },
               { label: "cost", class: "num", value: t => usd(t.cost_usd) },
               { label: "share", class: "num", value: t => pct(t.share) },
               { label: "requests", class: "num", value: t => num(t.requests) },
               { label: "tokens", class: "num", value: t => num(t.tokens) },
               { label: "saved", class: "num", value: t => usd(t.saved_usd) },
               { label: "errors", class: "num", value: t => num(t.errors) },
               { label: "cache hits", class: "num", value: t => num(t.cache_hits) }],
              d.totals.slice(0, 50), { class: "spend-totals",
                                       rowAttrs: t => ({ "data-group": t.group }) }));
      const pareto = section("Pareto curve of users",
        M.chart.lines({ label: "share of spend by share of users",
          lines: [{ name: "share of spend (biggest users first)",
                    points: d.pareto.map(x => [x.share_of_users, x.share_of_spend]) },
                  { name: "even spread", color: "#b8b8b8", dashed: true,
                    points: d.pareto.length ? [[0, 0], [1, 1]] : [] }],
          x0: 0, x1: 1, yMax: 1, xTicks: [0, 0.2, 0.4, 0.6, 0.8, 1],
          fmtX: v => (v * 100).toFixed(0) + " %", fmtY: v => (v * 100).toFixed(0) + " %",
          empty: "No user spent anything." }),
        paretoNote(d.pareto));
      const bots = section("Bot-like users",
        table([{ label: "user", value: f => f.group },
               { label: "why", class: "wrap", value: f => f.reason },
               { label: "req/min", class: "num", value: f => num(f.rate_per_min, 1) },
               { label: "gap CV", class: "num", value: f => num(f.interarrival_cv, 2) },
               { label: "repeated prompts", class: "num",
                 value: f => pct(f.repeated_prompt_share) }],
              d.flagged, { empty: "None of the biggest spenders looks like a bot." }));
      fill(body, over, h("div", { class: "two" }, pareto, bots), totals);
    }

    function paretoNote(curve) {
      const p = curve.find(x => x.share_of_users >= 0.2);
      return p ? h("p", { class: "muted" },
        `The top ${pct(p.share_of_users)} of users spend ${pct(p.share_of_spend)}.`) : null;
    }

    return {
      refresh: async () => render(await M.api.get("/admin/spend",
        Object.assign({}, p, filters))),
    };
  };
})(window.Margin);
