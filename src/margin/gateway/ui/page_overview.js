// Overview: spend, requests and tokens; savings per optimization; latencies and stages.
"use strict";
(function (M) {
  const { h, fill, usd, num, pct, ms, metric, table, section } = M;

  function trend(ratio) {
    if (ratio === null || ratio === undefined) return "no spend the 7 days before";
    const d = (ratio - 1) * 100;
    return (d >= 0 ? "▲ " : "▼ ") + Math.abs(d).toFixed(1) + " % vs the 7 days before";
  }

  function render(el, o, daily) {
    const s = o.spend_usd, r = o.requests, sv = o.saved_usd;
    const spend = section("Spend",
      h("div", { class: "cards" },
        metric("spend_usd_today", "Today", s.today, usd(s.today)),
        metric("spend_usd_7d", "Last 7 days", s["7d"], usd(s["7d"]), trend(o.spend_trend["7d_vs_prev"])),
        metric("spend_usd", "Last 30 days", s["30d"], usd(s["30d"]))),
      M.chart.stackedBars(daily.series, names(daily), { label: "spend per day, by model" }));
    const traffic = section("Traffic",
      h("div", { class: "cards" },
        metric("requests_today", "Requests today", r.today, num(r.today)),
        metric("requests_7d", "Requests, 7 days", r["7d"], num(r["7d"])),
        metric("requests", "Requests, 30 days", r["30d"], num(r["30d"])),
        metric("tokens_prompt", "Prompt tokens, 30 days", o.tokens.prompt, num(o.tokens.prompt)),
        metric("tokens_completion", "Completion tokens, 30 days", o.tokens.completion,
               num(o.tokens.completion)),
        metric("error_rate", "Error rate, 7 days", o.error_rate, pct(o.error_rate)),
        metric("cache_hit_rate", "Cache hit rate, 7 days", o.cache_hit_rate,
               pct(o.cache_hit_rate))));
    const saved = section("Saved, last 30 days",
      h("div", { class: "cards" },
        metric("saved_usd", "Saved in all", sv.total, usd(sv.total)),
        metric("saved_usd_exact_cache", "Exact cache", sv.exact_cache, usd(sv.exact_cache)),
        metric("saved_usd_semantic_cache", "Semantic cache", sv.semantic_cache,
               usd(sv.semantic_cache)),
        metric("saved_usd_routing", "Routing", sv.routing, usd(sv.routing)),
        metric("saved_usd_compression", "Compression", sv.compression, usd(sv.compression)),
        metric("saved_usd_batching", "Batching", sv.batching, usd(sv.batching))));
    const lat = o.latency_ms;
    const latency = section("Latency, last 24 hours",
      h("div", { class: "two" },
        table([{ label: "", value: x => x[0] },
               { label: "P50", class: "num", value: x => ms(x[1].p50) },
               { label: "P95", class: "num", value: x => ms(x[1].p95) },
               { label: "P99", class: "num", value: x => ms(x[1].p99) }],
              [["Gateway overhead", lat.overhead], ["Upstream", lat.upstream]],
              { rowAttrs: x => ({ "data-row": x[0] }) }),
        stages(o.stage_ms)));
    el.dataset.generatedAt = String(o.generated_at);  // the instant every window ends at
    fill(el, h("h1", {}, "Overview"), spend, traffic, saved, latency);
  }

  function names(daily) {
    return daily.totals.slice(0, 10).map(t => t.group)
      .concat(daily.series.some(p => "other" in p.values) ? ["other"] : []);
  }

  function stages(stageMs) {
    const rows = Object.entries(stageMs || {}).filter(([, v]) => v !== null);
    const max = Math.max(0.001, ...rows.map(([, v]) => v));
    return table([{ label: "Stage (own time, P50)", value: x => x[0] },
                  { label: "", class: "bar-cell", value: x => {
                      const b = h("span", { class: "bar" });
                      b.style.width = Math.max(1, (x[1] / max) * 100) + "%";
                      return b;
                    } },
                  { label: "ms", class: "num", value: x => ms(x[1]) }],
                 rows, { empty: "No requests in the last 24 hours." });
  }

  M.pages.overview = function (el) {
    return {
      refresh: async () => {
        const [o, daily] = await Promise.all([
          M.api.get("/admin/overview"),
          M.api.get("/admin/spend", { by: "model", since: "30d", bucket: "day" })]);
        render(el, o, daily);
      },
    };
  };
})(window.Margin);
