// A small charting library for the dashboard: time series as lines or stacked bars,
// horizontal bars, sparklines. Plain SVG drawn at the element's real width (redrawn when
// it changes), colours from the stylesheet (classes s0..s7), a tooltip that follows the
// pointer or the arrow keys, and an aria-label that says what the chart shows.

import { h, s, clear } from "./dom.js";
import { axisTime } from "./format.js";

const TICKS = 4;

/** A "nice" upper bound and step for an axis from 0 to `max`. */
export function niceScale(max, ticks = TICKS) {
  if (!(max > 0)) return { max: 1, step: 1 / ticks };
  const rough = max / ticks;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((v) => v >= rough) || 10 * power;
  return { max: step * Math.ceil(max / step - 1e-9), step };
}

function observeWidth(el, draw) {
  let width = 0;
  const redraw = () => {
    const next = Math.floor(el.clientWidth);
    if (next > 0 && next !== width) {
      width = next;
      draw(width);
    }
  };
  if (typeof ResizeObserver === "function") new ResizeObserver(redraw).observe(el);
  requestAnimationFrame(redraw);
}

/**
 * A time-series chart.
 * @param {object} o
 * @param {number[]} o.buckets  each point's time (epoch seconds)
 * @param {{label: string, values: (number|null)[], cls?: string}[]} o.series
 * @param {"line"|"bars"} [o.kind]  bars are stacked
 * @param {(v: number) => string} [o.format]  a value as text
 * @param {string} o.label  what the chart shows (for screen readers)
 * @param {number} [o.height]
 * @param {number} [o.step]  seconds per bucket (tooltip times)
 */
export function timeChart({ buckets, series, kind = "line", format = String, label, height = 220, step = 3600 }) {
  const tip = h("div.chart-tip", { hidden: true });
  const el = h("div.chart", { role: "img", tabindex: "0", "aria-label": describe(label, buckets, series, format) });
  const span = buckets.length ? buckets[buckets.length - 1] - buckets[0] + step : step;
  let index = -1;
  let geometry = null;

  function draw(width) {
    clear(el);
    const n = buckets.length;
    const totals = buckets.map((_, i) => kind === "bars"
      ? series.reduce((sum, line) => sum + (line.values[i] || 0), 0)
      : Math.max(0, ...series.map((line) => line.values[i] || 0)));
    const scale = niceScale(Math.max(0, ...totals));
    const labels = [];
    for (let v = 0; v <= scale.max + 1e-9; v += scale.step) labels.push(v);
    const left = Math.max(...labels.map((v) => format(v).length)) * 6.6 + 12;
    const top = 8, bottom = 24, right = 10;
    const plotW = Math.max(10, width - left - right), plotH = height - top - bottom;
    const band = n ? plotW / n : plotW;
    const x = (i) => left + (kind === "bars" ? band * (i + 0.5) : (n > 1 ? (plotW * i) / (n - 1) : plotW / 2));
    const y = (v) => top + plotH - (plotH * v) / scale.max;
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, "aria-hidden": "true" });
    for (const v of labels) {
      svg.append(s("line", { class: "grid-line", x1: left, x2: left + plotW, y1: y(v), y2: y(v) }));
      svg.append(s("text", { class: "axis-label", x: left - 6, y: y(v) + 4, "text-anchor": "end" }, format(v)));
    }
    const labelWidth = span > 2 * 86400 && step < 86400 ? 110 : 86;
    const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(plotW / labelWidth))));
    for (let i = 0; i < n; i += every) {
      svg.append(s("text", { class: "axis-label", x: x(i), y: height - 6, "text-anchor": "middle" },
        axisTime(buckets[i], span, step)));
    }
    if (kind === "bars") {
      const barW = Math.max(1, band * 0.72);
      const base = new Array(n).fill(0);
      series.forEach((line, k) => {
        const cls = `bar ${line.cls || "s" + (k % 8)}`;
        line.values.forEach((v, i) => {
          if (!v) return;
          const y0 = y(base[i]), y1 = y(base[i] + v);
          base[i] += v;
          svg.append(s("rect", { class: cls, x: x(i) - barW / 2, y: y1, width: barW, height: Math.max(0.5, y0 - y1), rx: Math.min(2, barW / 4) }));
        });
      });
    } else {
      series.forEach((line, k) => {
        const cls = line.cls || "s" + (k % 8);
        let d = "", area = "", open = false, startX = 0, lastX = 0;
        line.values.forEach((v, i) => {
          if (v === null || v === undefined) {
            if (open && series.length === 1) area += `L${lastX},${y(0)}L${startX},${y(0)}Z`;
            open = false;
            return;
          }
          const px = x(i), py = y(v);
          d += `${open ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`;
          if (series.length === 1) area += `${open ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`;
          if (!open) startX = px;
          lastX = px;
          open = true;
        });
        if (open && series.length === 1) area += `L${lastX},${y(0)}L${startX},${y(0)}Z`;
        if (area) svg.append(s("path", { class: `area ${cls}`, d: area }));
        if (d) svg.append(s("path", { class: `line ${cls}`, d }));
        if (n === 1 && line.values[0] !== null) svg.append(s("circle", { class: `dot ${cls}`, cx: x(0), cy: y(line.values[0]), r: 4 }));
      });
    }
    const cursor = s("g", { visibility: "hidden" });
    svg.append(cursor);
    el.append(svg, tip);
    geometry = { x, y, n, cursor, left, plotW, width, top, plotH, band };
    if (index >= 0) show(Math.min(index, n - 1));
  }

  function show(i) {
    if (!geometry || i < 0 || i >= geometry.n) return;
    index = i;
    const { x, y, cursor, top, plotH } = geometry;
    clear(cursor);
    cursor.setAttribute("visibility", "visible");
    cursor.append(s("line", { class: "cursor", x1: x(i), x2: x(i), y1: top, y2: top + plotH }));
    let stack = 0;
    series.forEach((line, k) => {
      const v = line.values[i];
      if (v === null || v === undefined || (kind === "bars" && !v)) return;
      stack += v;
      cursor.append(s("circle", { class: `dot ${line.cls || "s" + (k % 8)}`, cx: x(i), cy: y(kind === "bars" ? stack : v), r: 3.5 }));
    });
    clear(tip);
    tip.append(h("div.tip-title", {}, tipTime(buckets[i], step)));
    series.forEach((line, k) => {
      tip.append(h("div.tip-row", {}, h("span", {}, h(`span.swatch.${line.cls || "s" + (k % 8)}`), " ", line.label),
        h("strong", {}, line.values[i] === null || line.values[i] === undefined ? "—" : format(line.values[i]))));
    });
    tip.hidden = false;
    const tipW = tip.offsetWidth || 160;
    const px = x(i);
    tip.style.left = `${Math.min(Math.max(0, px + 12), geometry.width - tipW)}px`;
    tip.style.top = "4px";
  }

  function hide() {
    index = -1;
    tip.hidden = true;
    if (geometry) geometry.cursor.setAttribute("visibility", "hidden");
  }

  el.addEventListener("pointermove", (event) => {
    if (!geometry || !geometry.n) return;
    const rect = el.getBoundingClientRect();
    const px = event.clientX - rect.left;
    const { left, plotW, n } = geometry;
    const frac = (px - left) / plotW;
    const i = kind === "bars" ? Math.floor(frac * n) : Math.round(frac * (n - 1));
    show(Math.min(n - 1, Math.max(0, i)));
  });
  el.addEventListener("pointerleave", hide);
  el.addEventListener("blur", hide);
  el.addEventListener("keydown", (event) => {
    if (!geometry || !geometry.n) return;
    if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
      event.preventDefault();
      const next = index < 0 ? (event.key === "ArrowRight" ? 0 : geometry.n - 1)
        : index + (event.key === "ArrowRight" ? 1 : -1);
      show(Math.min(geometry.n - 1, Math.max(0, next)));
    } else if (event.key === "Escape") {
      hide();
    }
  });
  observeWidth(el, draw);
  const wrap = h("div", {}, el);
  if (series.length > 1 || series.some((line) => line.total !== undefined)) {
    wrap.append(legend(series, format));
  }
  return wrap;
}

function tipTime(ts, step) {
  const d = new Date(ts * 1000);
  if (step >= 86400) return d.toLocaleDateString(undefined, { weekday: "short", month: "short", day: "numeric" });
  return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

function describe(label, buckets, series, format) {
  if (!buckets.length) return `${label}: no data`;
  const from = new Date(buckets[0] * 1000).toLocaleString();
  const to = new Date(buckets[buckets.length - 1] * 1000).toLocaleString();
  const parts = series.slice(0, 5).map((line) => {
    const total = line.total !== undefined ? line.total : line.values.reduce((a, v) => a + (v || 0), 0);
    return `${line.label} ${format(total)}`;
  });
  return `${label}, ${from} to ${to}: ${parts.join(", ")}. Arrow keys step through the points.`;
}

export function legend(series, format = String) {
  return h("div.legend", {}, series.map((line, k) => h("span", {},
    h(`span.swatch.${line.cls || "s" + (k % 8)}`), line.label,
    line.total !== undefined && line.total !== null ? h("span.muted", {}, format(line.total)) : null)));
}

/** Horizontal bars: items [{label, value, text}] scaled to the largest. */
export function hbars(items, { cls = "s0" } = {}) {
  const max = Math.max(0, ...items.map((item) => item.value || 0)) || 1;
  return h("div.hbars", { role: "list" }, items.map((item) => h("div.hbar-row", { role: "listitem" },
    h("span.hbar-label", { title: item.label }, item.label),
    h("span.num.small", {}, item.text),
    h("div.hbar-track", { "aria-hidden": "true" },
      s("svg", { viewBox: "0 0 100 6", preserveAspectRatio: "none" },
        s("rect", { class: cls, x: 0, y: 0, height: 6, width: Math.max(0.5, (100 * (item.value || 0)) / max) }))))));
}

/** A tiny line of `values` (no axes), for KPI cards. */
export function sparkline(values, { cls = "s0", width = 120, height = 28 } = {}) {
  const max = Math.max(0, ...values.map((v) => v || 0)) || 1;
  const n = values.length;
  let d = "";
  values.forEach((v, i) => {
    const x = n > 1 ? (width * i) / (n - 1) : width / 2;
    const y = height - 2 - ((height - 4) * (v || 0)) / max;
    d += `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`;
  });
  return s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "sparkline", "aria-hidden": "true" },
    s("path", { d, class: `line ${cls}`, fill: "none", "stroke-width": 1.8 }));
}
