// Anomalies: hours whose cost stood far above their group's usual (margin anomalies).
"use strict";
(function (M) {
  const { h, fill, usd, num, when, table, section } = M;
  const RANGES = [["24h", "last 24 hours"], ["7d", "last 7 days"], ["30d", "last 30 days"]];

  M.pages.anomalies = function (el) {
    let since = "7d";
    const body = h("div");
    fill(el, h("h1", {}, "Anomalies"),
         h("form", { class: "controls", onsubmit: ev => ev.preventDefault() },
           h("label", {}, "window ", M.select("since", RANGES, since, ev => {
             since = ev.target.value; M.refreshNow(); }))),
         body);
    return {
      refresh: async () => {
        const d = await M.api.get("/admin/anomalies", { since });
        fill(body, section("Cost anomalies",
          h("p", { class: "muted" }, "Hours in which a user, team, feature or model cost far "
            + "more than its usual for that hour (limits.anomalies)."),
          table([{ label: "hour", value: a => when(a.at) },
                 { label: "group", value: a => a.group },
                 { label: "cost", class: "num", value: a => usd(a.detail.cost_usd) },
                 { label: "usual", class: "num", value: a => usd(a.detail.baseline_usd) },
                 { label: "ratio", class: "num", value: a => num(a.detail.ratio, 1) + "×" },
                 { label: "score", class: "num", value: a => num(a.detail.score, 1) }],
                d.anomalies, { class: "anomalies", empty: "No anomaly in this window.",
                               rowAttrs: a => ({ "data-group": a.group }) })));
      },
    };
  };
})(window.Margin);
