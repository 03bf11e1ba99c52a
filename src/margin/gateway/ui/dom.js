// DOM and number helpers shared by every page. Text always goes in through textContent:
// user, team and feature names come from request headers and must never become markup.
"use strict";
window.Margin = window.Margin || { pages: {} };

(function (M) {
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "value") el.value = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function usd(v) {
    if (v === null || v === undefined) return "–";
    const a = Math.abs(v);
    const digits = a === 0 ? 2 : a < 0.01 ? 5 : a < 1 ? 4 : 2;
    return "$" + v.toLocaleString("en-US", { minimumFractionDigits: digits,
                                             maximumFractionDigits: digits });
  }
  function num(v, digits) {
    if (v === null || v === undefined) return "–";
    return v.toLocaleString("en-US", { maximumFractionDigits: digits === undefined ? 0 : digits });
  }
  function pct(v) {
    return v === null || v === undefined ? "–" : (v * 100).toFixed(1) + " %";
  }
  function ms(v) {
    if (v === null || v === undefined) return "–";
    return v < 10 ? v.toFixed(2) + " ms" : v < 1000 ? v.toFixed(0) + " ms"
      : (v / 1000).toFixed(2) + " s";
  }
  // A rate or another small quantity: two significant digits below 1.
  function qty(v) {
    if (v === null || v === undefined) return "–";
    if (v === 0) return "0";
    const a = Math.abs(v);
    return a >= 100 ? num(v, 0) : a >= 1 ? num(v, 2) : Number(v.toPrecision(2)).toString();
  }
  function when(t) {
    if (t === null || t === undefined) return "–";
    const d = new Date(t * 1000);
    return d.toLocaleString("en-GB", { year: "numeric", month: "short", day: "2-digit",
                                       hour: "2-digit", minute: "2-digit" });
  }
  function day(t) {
    if (t === null || t === undefined) return "–";
    return new Date(t * 1000).toLocaleDateString("en-GB", { month: "short", day: "2-digit" });
  }

  // A key figure: its raw value in data-value so tests and scripts read the exact number.
  function metric(name, label, value, shown, sub) {
    const text = value === null || value === undefined;
    return h("div", { class: "card" },
      h("div", { class: "card-label" }, label),
      h("div", { class: "card-value" + (text ? " text" : ""), "data-metric": name,
                 "data-value": value === null || value === undefined ? "" : String(value) },
        shown),
      sub ? h("div", { class: "card-sub muted" }, sub) : null);
  }

  // columns: [{label, value: row => text|Node, class?}]
  function table(columns, rows, opts) {
    opts = opts || {};
    const head = h("tr", {}, columns.map(c => h("th", { class: c.class }, c.label)));
    const body = rows.map((r, i) => {
      const tr = h("tr", opts.rowAttrs ? opts.rowAttrs(r, i) : {},
        columns.map(c => h("td", { class: c.class }, c.value(r))));
      if (opts.onRow) {
        tr.classList.add("clickable");
        tr.addEventListener("click", () => opts.onRow(r, tr));
      }
      return tr;
    });
    const t = h("table", { class: "grid" + (opts.class ? " " + opts.class : "") },
      h("thead", {}, head), h("tbody", {}, body));
    if (!rows.length) {
      t.tBodies[0].append(h("tr", {}, h("td", { colspan: columns.length, class: "muted empty" },
        opts.empty || "Nothing in this window.")));
    }
    return h("div", { class: "table-scroll" }, t);
  }

  function select(name, options, value, onchange) {
    return h("select", { name, onchange },
      options.map(([v, label]) => {
        const o = h("option", { value: v }, label);
        if (v === value) o.selected = true;
        return o;
      }));
  }

  function section(title, ...children) {
    return h("section", { class: "panel" }, h("h2", {}, title), children);
  }

  // Replace an element's children, keeping the element (and its listeners) in place.
  function fill(el, ...children) {
    el.replaceChildren();
    return append(el, children);
  }

  Object.assign(M, { h, append, fill, usd, num, qty, pct, ms, when, day, metric, table, select,
                     section });
})(window.Margin);
