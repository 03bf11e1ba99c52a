// Budgets: each budget's use in its period, the projection to the period's end with its
// band, the projected exhaustion date, and the alerts sent.
"use strict";
(function (M) {
  const { h, fill, usd, pct, when, day, table, section } = M;

  function useBar(b) {
    const outer = h("span", { class: "meter" });
    const used = h("span", { class: "meter-used" + (b.share_used >= 1 ? " over" : "") });
    used.style.width = Math.min(100, b.share_used * 100) + "%";
    outer.append(used);
    if (b.limit_usd > 0 && b.projected_usd !== null && b.projected_usd !== undefined) {
      const mark = h("span", { class: "meter-projected", title: "projected at period end" });
      mark.style.left = Math.min(100, (b.projected_usd / b.limit_usd) * 100) + "%";
      outer.append(mark);
    }
    return h("span", { class: "meter-wrap" }, outer, " ", pct(b.share_used));
  }

  function exhaustion(b) {
    if (b.exhaustion_at === null || b.exhaustion_at === undefined) {
      return h("span", { class: "muted" }, "not before the period ends");
    }
    const band = b.exhaustion_low || b.exhaustion_high
      ? `80 % band: ${b.exhaustion_low ? day(b.exhaustion_low) : "–"} to `
        + (b.exhaustion_high ? day(b.exhaustion_high) : "after the end") : null;
    return [h("div", { class: "warn", "data-metric": "exhaustion_at",
                       "data-value": String(b.exhaustion_at) }, when(b.exhaustion_at)),
            band ? h("div", { class: "muted small" }, band) : null];
  }

  // One line per alert; the message is the tooltip (the table above has the due ones).
  function alerts(list) {
    if (!list.length) return h("span", { class: "muted" }, "none");
    return list.map(a => h("div", { title: a.message },
      h("span", { class: "tag" }, a.kind.replace(/_/g, " ")), " ",
      a.at ? when(a.at) : h("span", { class: "muted" }, "due")));
  }

  function projected(x) {
    if (x.projected_usd === null || x.projected_usd === undefined) return "–";
    return [h("div", {}, usd(x.projected_usd)),
            h("div", { class: "muted small" },
              `${usd(x.projected_low_usd)} – ${usd(x.projected_high_usd)}`)];
  }

  M.pages.budgets = function (el) {
    const body = h("div");
    fill(el, h("h1", {}, "Budgets"), body);
    return {
      refresh: async () => {
        const [b, a] = await Promise.all([M.api.get("/admin/budgets"),
                                          M.api.get("/admin/alerts")]);
        const due = section("Forecast alerts",
          table([{ label: "kind", value: x => h("span", { class: "tag" },
                                                   x.kind.replace(/_/g, " ")) },
                 { label: "scope", value: x => x.scope },
                 { label: "predicted", value: x => when(x.predicted_at) },
                 { label: "sent", value: x => x.fired_at ? when(x.fired_at) : "not yet" },
                 { label: "message", class: "wrap wide", value: x => x.message }],
                a.alerts, { empty: "No budget is projected to run out, and no model to "
                                   + "cross 80 % of its capacity." }));
        const list = section("Budgets this period",
          table([{ label: "scope", value: x => x.scope },
                 { label: "period", value: x => [h("div", {}, x.period),
                   h("div", { class: "muted small" },
                     `${day(x.period_start)} – ${day(x.period_end)}`)] },
                 { label: "limit", class: "num", value: x => usd(x.limit_usd) },
                 { label: "spent", class: "num", value: x => h("span", {
                     "data-metric": "budget_spent_usd", "data-value": String(x.spent_usd) },
                   usd(x.spent_usd)) },
                 { label: "used", value: useBar },
                 { label: "projected at end", class: "num", value: projected },
                 { label: "runs out", value: exhaustion },
                 { label: "alerts", value: x => alerts(x.alerts) }],
                b.budgets, { rowAttrs: x => ({ "data-scope": x.scope }),
                             empty: "No budgets: set limits.budgets, or a budget on a key." }));
        fill(body, due, list);
      },
    };
  };
})(window.Margin);
