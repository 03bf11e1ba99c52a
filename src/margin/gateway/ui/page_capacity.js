// Capacity: each model's load now and forecast (requests/s, tokens/s, 80 % bands) against
// its configured capacity, and when the forecast crosses it.
"use strict";
(function (M) {
  const { h, fill, when, metric, section } = M;
  const HORIZONS = [["1d", "1 day"], ["7d", "7 days"], ["14d", "14 days"], ["30d", "30 days"]];

  function chart(m, unit, label) {
    const cap = m.capacity ? m.capacity[unit] : null;
    const limits = cap ? [{ y: cap, label: "capacity", color: "#c44e52" },
                          { y: cap * 0.8, label: "80 %", color: "#e07b39" }] : [];
    return M.chart.lines({
      label,
      lines: [{ name: "measured (hourly mean)", points: m.series.map(p => [p.t, p[unit]]) },
              { name: "forecast", dashed: true, color: "#3a9d6a",
                points: m.forecast.map(p => [p.t, p[unit]]) }],
      bands: [{ color: "#3a9d6a", points: m.forecast.map(p => [p.t, p[unit + "_low"],
                                                                p[unit + "_high"]]) }],
      limits, fmtY: M.qty, empty: "No traffic for this model yet." });
  }

  function model(m) {
    const c = m.capacity;
    return section(m.model,
      h("div", { class: "cards" },
        metric("rps_now", "Requests/s now", m.now.rps, M.qty(m.now.rps)),
        metric("tps_now", "Tokens/s now", m.now.tps, M.qty(m.now.tps)),
        metric("capacity", "Capacity", c ? c.rps || c.tps : null,
               c ? [c.rps ? M.qty(c.rps) + " req/s" : null,
                    c.tps ? M.qty(c.tps) + " tok/s" : null].filter(Boolean).join(", ")
                 : "not configured", c ? c.source : "set capacity: in margin.yaml"),
        metric("crosses_80pct_at", "Forecast reaches 80 %", m.crosses_80pct_at,
               m.crosses_80pct_at ? when(m.crosses_80pct_at) : "not within the horizon"),
        metric("crosses_at", "Forecast reaches capacity", m.crosses_at,
               m.crosses_at ? when(m.crosses_at) : "not within the horizon")),
      h("div", { class: "two" },
        h("div", {}, h("h3", {}, "Requests per second"), chart(m, "rps", "requests per second")),
        h("div", {}, h("h3", {}, "Tokens per second"), chart(m, "tps", "tokens per second"))));
  }

  M.pages.capacity = function (el) {
    let horizon = "7d";
    const body = h("div");
    fill(el, h("h1", {}, "Capacity"),
         h("form", { class: "controls", onsubmit: ev => ev.preventDefault() },
           h("label", {}, "forecast horizon ", M.select("horizon", HORIZONS, horizon, ev => {
             horizon = ev.target.value; M.refreshNow(); }))),
         body);
    return {
      refresh: async () => {
        const d = await M.api.get("/admin/capacity", { horizon });
        // Models with a configured capacity first: theirs is the forecast that matters.
        const models = d.models.slice().sort((a, b) => (!a.capacity) - (!b.capacity));
        fill(body, models.length ? models.map(model)
          : h("p", { class: "muted" }, "No model has traffic or a capacity: entry yet."));
      },
    };
  };
})(window.Margin);
