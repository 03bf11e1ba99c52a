// A small SVG chart helper: stacked bars over time and lines with bands and limit lines.
// Hand-written on purpose: two chart kinds do not justify vendoring a charting library.
"use strict";
(function (M) {
  const NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2f6db5", "#e07b39", "#3a9d6a", "#c44e52", "#8172b2", "#937860",
                   "#da8bc3", "#5fa2ce", "#b5a33a", "#4c8c8c", "#a0a0a0"];
  // Text in the SVG scales with it: a chart drawn in half the width gets a narrower
  // viewBox (opts.width), so its labels come out the same size as a full-width chart's.
  const H = 240, PAD = { l: 64, r: 16, t: 12, b: 28 };
  let W = 1000;

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(c));
    return el;
  }

  function color(i, name) {
    return name === "other" ? "#b8b8b8" : PALETTE[i % PALETTE.length];
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    // Multiples whose quarters (the gridlines) are round numbers too.
    for (const m of [1, 2, 4, 6, 8, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // xTicks: the x values to label (default: 6 even steps).
  function axes(svg, x0, x1, yMax, fmtY, fmtX, xTicks) {
    const sx = x => PAD.l + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (W - PAD.l - PAD.r);
    const sy = y => H - PAD.b - (y / yMax) * (H - PAD.t - PAD.b);
    for (let i = 0; i <= 4; i++) {
      const y = (yMax * i) / 4;
      svg.append(s("line", { x1: PAD.l, x2: W - PAD.r, y1: sy(y), y2: sy(y), class: "gridline" }));
      svg.append(s("text", { x: PAD.l - 6, y: sy(y) + 4, class: "tick", "text-anchor": "end" },
        fmtY(y)));
    }
    const ticks = xTicks || [0, 1, 2, 3, 4, 5, 6].map(i => x0 + ((x1 - x0) * i) / 6);
    ticks.forEach((x, i) => {
      const anchor = xTicks ? "middle" : i === 0 ? "start" : i === ticks.length - 1 ? "end"
        : "middle";
      svg.append(s("text", { x: sx(x), y: H - 8, class: "tick", "text-anchor": anchor },
        fmtX(x)));
    });
    return { sx, sy };
  }

  function frame(label, width) {
    W = width || 1000;
    return s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
                      "aria-label": label || "chart" });
  }

  function legend(names, colors) {
    return M.h("div", { class: "legend" }, names.map((n, i) => {
      const sw = M.h("span", { class: "swatch" });
      sw.style.background = colors ? colors[i] : color(i, n);
      return M.h("span", { class: "legend-item" }, sw, n);
    }));
  }

  // series: [{t, values: {name: number}}]; names: the stacking order (biggest first).
  function stackedBars(series, names, opts) {
    opts = opts || {};
    const svg = frame(opts.label, opts.width);
    if (!series.length) return M.h("p", { class: "muted" }, "No spend in this window.");
    const step = opts.bucket_s || 86400;
    const x0 = series[0].t, x1 = series[series.length - 1].t + step;
    const totals = series.map(p => names.reduce((a, n) => a + (p.values[n] || 0), 0));
    const yMax = niceMax(Math.max(...totals));
    // Labels under bars, every k-th so that at most 10 are written.
    const k = Math.max(1, Math.ceil(series.length / 10));
    const labelled = series.filter((_, i) => i % k === 0).map(p => p.t + step / 2);
    const fmtX = opts.fmtX || M.day;
    const { sx, sy } = axes(svg, x0, x1, yMax, opts.fmtY || M.usd, t => fmtX(t - step / 2),
                            labelled);
    const bw = Math.max(1, (sx(x0 + step) - sx(x0)) * 0.8);
    series.forEach(p => {
      let acc = 0;
      names.forEach((n, i) => {
        const v = p.values[n] || 0;
        if (v <= 0) return;
        const r = s("rect", { x: sx(p.t) + bw * 0.1, width: bw, y: sy(acc + v),
                              height: Math.max(0.5, sy(acc) - sy(acc + v)),
                              fill: color(i, n) });
        r.append(s("title", {}, `${n}: ${M.usd(v)} (${M.when(p.t)})`));
        svg.append(r);
        acc += v;
      });
    });
    return M.h("div", { class: "chart-box" }, svg, legend(names));
  }

  // lines: [{name, points: [[x, y]], dashed?, color?}], bands: [{points: [[x, lo, hi]]}],
  // limits: [{y, label, color}]
  function lines(spec) {
    const svg = frame(spec.label, spec.width || 520);
    const xs = [], ys = [0];
    for (const l of spec.lines) for (const [x, y] of l.points) { xs.push(x); ys.push(y); }
    for (const b of spec.bands || []) for (const [x, , hi] of b.points) { xs.push(x); ys.push(hi); }
    for (const l of spec.limits || []) ys.push(l.y);
    if (!xs.length) return M.h("p", { class: "muted" }, spec.empty || "No data.");
    const x0 = spec.x0 !== undefined ? spec.x0 : Math.min(...xs);
    const x1 = spec.x1 !== undefined ? spec.x1 : Math.max(...xs);
    const yMax = spec.yMax || niceMax(Math.max(...ys.filter(Number.isFinite)) * 1.05);
    const { sx, sy } = axes(svg, x0, x1, yMax, spec.fmtY || (v => M.num(v, 2)),
                            spec.fmtX || M.day, spec.xTicks);
    for (const b of spec.bands || []) {
      if (!b.points.length) continue;
      const top = b.points.map(([x, , hi]) => `${sx(x)},${sy(hi)}`);
      const bottom = b.points.slice().reverse().map(([x, lo]) => `${sx(x)},${sy(lo)}`);
      svg.append(s("polygon", { points: top.concat(bottom).join(" "), class: "band",
                                fill: b.color || "#2f6db5" }));
    }
    // Limit labels alternate between the right and the left end, so that two close
    // lines (capacity and 80 % of it) do not write over each other.
    (spec.limits || []).forEach((l, i) => {
      svg.append(s("line", { x1: PAD.l, x2: W - PAD.r, y1: sy(l.y), y2: sy(l.y),
                             stroke: l.color, class: "limit" }));
      const right = i % 2 === 0;
      const label = s("text", { x: right ? W - PAD.r - 4 : PAD.l + 4, y: sy(l.y) - 4,
                                class: "tick", "text-anchor": right ? "end" : "start" },
                      l.label);
      label.style.fill = l.color;  // over the ticks' grey (CSSOM: allowed by the CSP)
      svg.append(label);
    });
    spec.lines.forEach((l, i) => {
      if (!l.points.length) return;
      svg.append(s("polyline", {
        points: l.points.map(([x, y]) => `${sx(x)},${sy(y)}`).join(" "),
        fill: "none", stroke: l.color || color(i), "stroke-width": 2,
        "stroke-dasharray": l.dashed ? "5 4" : "none" }));
    });
    const names = spec.lines.map(l => l.name);
    const colors = spec.lines.map((l, i) => l.color || color(i));
    return M.h("div", { class: "chart-box" }, svg,
               spec.legend === false ? null : legend(names, colors));
  }

  M.chart = { stackedBars, lines, color };
})(window.Margin);
