// Usage and cost: a metric over time by model, provider, key or account (a chart drawn
// here from GET /api/usage/series), the totals and savings (cache, subscriptions), a
// table by group and its CSV export (made in the browser from what is shown).

import { get, query } from "../api.js";
import { h, replace, errorBox, table, segmented, select, field, input, download, csv, emptyState } from "../dom.js";
import * as fmt from "../format.js";
import { timeChart } from "../chart.js";

const RANGES = [["24h", "24 hours"], ["7d", "7 days"], ["30d", "30 days"], ["custom", "Custom"]];
const GROUPS = [["model", "Model"], ["provider", "Provider"], ["key", "API key"], ["connection", "Account"]];
const METRICS = [
  ["requests", "Requests", fmt.compact], ["cost_usd", "Cost", fmt.usd], ["tokens_in", "Input tokens", fmt.compact],
  ["tokens_out", "Output tokens", fmt.compact], ["errors", "Errors", fmt.compact],
  ["avg_latency_ms", "Average latency", fmt.ms], ["saved_usd", "Saved", fmt.usd], ["cache_hits", "Cache hits", fmt.compact],
];

function groupName(dim, row) {
  if (dim === "key") return row.key_name || row.key_id || "no key";
  if (dim === "connection") return row.connection_name || row.connection_id || "none";
  return row[dim] || "none";
}

/** The time range asked for: [from, to] epoch seconds and the bucket to chart by. */
function span(state) {
  const now = Math.floor(Date.now() / 1000);
  if (state.range === "custom" && state.from && state.to) {
    const from = Math.floor(new Date(`${state.from}T00:00:00`).getTime() / 1000);
    const to = Math.floor(new Date(`${state.to}T00:00:00`).getTime() / 1000) + 86400;
    return { from, to, bucket: to - from <= 3 * 86400 ? "hour" : "day" };
  }
  const seconds = { "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400 }[state.range] || 86400;
  if (seconds <= 7 * 86400) {
    const end = Math.ceil(now / 3600) * 3600;
    return { from: end - seconds, to: end, bucket: "hour" };
  }
  const midnight = new Date();
  midnight.setHours(24, 0, 0, 0);
  const end = Math.floor(midnight.getTime() / 1000);
  return { from: end - seconds, to: end, bucket: "day" };
}

export default {
  title: "Usage and cost",
  async mount(root, ctx) {
    const params = ctx.params;
    const state = {
      range: params.get("range") || "24h", by: params.get("by") || "model",
      metric: params.get("metric") || "requests", from: params.get("from") || "", to: params.get("to") || "",
    };
    const kpiSlot = h("div");
    const chartSlot = h("div");
    const tableSlot = h("div");
    const custom = h("div.filters", { hidden: state.range !== "custom" });
    const today = new Date().toISOString().slice(0, 10);
    const fromField = field("From", input({ type: "date", value: state.from || today, max: today, name: "from" }));
    const toField = field("To", input({ type: "date", value: state.to || today, max: today, name: "to" }));
    custom.append(fromField.el, toField.el);
    const metricSelect = select(METRICS.map(([v, label]) => [v, label]), state.metric, { name: "metric", "aria-label": "Metric" });
    const exportTable = h("button.button", { type: "button" }, "Export table (CSV)");
    const exportTime = h("button.button", { type: "button" }, "Export over time (CSV)");
    let last = null;

    function remember() {
      const keep = { range: state.range, by: state.by, metric: state.metric };
      if (state.range === "custom") Object.assign(keep, { from: state.from, to: state.to });
      history.replaceState(null, "", `/dashboard/usage?${new URLSearchParams(keep)}`);
    }

    const controls = h("div.filters", {},
      h("div.field.seg", {}, h("span", {}, "Range"), segmented(RANGES, state.range, (v) => {
        state.range = v;
        custom.hidden = v !== "custom";
        if (v === "custom") { state.from = fromField.input.value; state.to = toField.input.value; }
        load();
      }, "Range")),
      h("div.field.seg", {}, h("span", {}, "Group by"), segmented(GROUPS, state.by, (v) => { state.by = v; load(); }, "Group by")),
      h("div.field", {}, h("label", { for: "usage-metric" }, "Chart"), Object.assign(metricSelect, { id: "usage-metric" })));
    metricSelect.addEventListener("change", () => { state.metric = metricSelect.value; load(); });
    for (const f of [fromField, toField]) {
      f.input.addEventListener("change", () => { state.from = fromField.input.value; state.to = toField.input.value; load(); });
    }

    replace(root, h("div.page-head", {}, h("h1", {}, "Usage and cost"), h("div.actions", {}, exportTable, exportTime)),
      controls, custom, kpiSlot,
      h("section.card", { "aria-labelledby": "usage-chart" }, h("div.card-head", {}, h("h2", { id: "usage-chart" }, "Over time")), chartSlot),
      h("section.section", { "aria-labelledby": "usage-table" }, h("h2", { id: "usage-table" }, "By group"), tableSlot));

    async function load() {
      remember();
      const { from, to, bucket } = span(state);
      if (from >= to) {
        replace(chartSlot, errorBox({ message: "'From' must be before 'To'." }));
        return;
      }
      const common = { from, to, bucket };
      try {
        const [summary, series] = await Promise.all([
          get(`/api/usage/summary${query({ ...common, by: `${state.by},time` })}`, { signal: ctx.signal }),
          get(`/api/usage/series${query({ ...common, by: state.by, metric: state.metric, top: 6 })}`, { signal: ctx.signal }),
        ]);
        last = { summary, series, bucket };
        draw(summary, series, bucket);
      } catch (err) {
        if (err.name === "AbortError") return;
        replace(chartSlot, errorBox(err));
      }
    }

    function draw(summary, series, bucket) {
      const t = summary.totals;
      const metric = METRICS.find(([v]) => v === state.metric) || METRICS[0];
      replace(kpiSlot, h("div.kpis", {},
        kpi("Requests", fmt.int(t.requests), `${fmt.int(t.errors)} failed (${fmt.percent(t.errors, t.requests)})`),
        kpi("Cost", fmt.usd(t.cost_usd), t.list_cost_usd !== t.cost_usd ? `list price ${fmt.usd(t.list_cost_usd)}` : null),
        kpi("Saved by caching", fmt.usd(t.saved_by_cache_usd), `${fmt.int(t.cache_hits)} answers from the cache`),
        kpi("Saved by subscriptions", fmt.usd(t.saved_by_subscription_usd), "their list price, paid by the plan"),
        kpi("Tokens", `${fmt.compact(t.tokens_in)} in`, `${fmt.compact(t.tokens_out)} out · ${fmt.compact(t.cache_read_tokens)} cache read`),
        kpi("Average latency", fmt.ms(t.avg_latency_ms), null)));
      if (!t.requests) {
        replace(chartSlot, emptyState("No requests in this range", "Requests through the gateway appear here within a second."));
      } else {
        replace(chartSlot, timeChart({
          buckets: series.buckets, step: bucket === "hour" ? 3600 : 86400, height: 260, format: metric[2],
          label: `${metric[1]} by ${state.by}`,
          series: series.series.map((line, k) => ({ label: line.label, values: line.values, total: line.total,
            cls: line.other ? "s7" : `s${k % 7}` })),
        }));
      }
      const rows = summary[`by_${state.by}`] || [];
      replace(tableSlot, table([
        { title: GROUPS.find(([v]) => v === state.by)[1], cell: (r) => h("span.cell-main", {}, groupName(state.by, r)) },
        { title: "Requests", cell: (r) => fmt.int(r.requests), num: true },
        { title: "Errors", cell: (r) => fmt.int(r.errors), num: true, hideNarrow: true },
        { title: "Tokens in", cell: (r) => fmt.compact(r.tokens_in), num: true, hideNarrow: true },
        { title: "Tokens out", cell: (r) => fmt.compact(r.tokens_out), num: true, hideNarrow: true },
        { title: "Cost", cell: (r) => fmt.usd(r.cost_usd), num: true },
        { title: "Saved", cell: (r) => fmt.usd(r.saved_usd), num: true, hideNarrow: true },
        { title: "Avg latency", cell: (r) => fmt.ms(r.avg_latency_ms), num: true, hideNarrow: true },
      ], rows, { empty: "No requests in this range.", caption: "Usage by group" }));
    }

    function kpi(label, value, sub) {
      return h("div.kpi", { role: "group", "aria-label": label }, h("div.label", {}, label), h("div.value", {}, value),
        sub ? h("div.sub", {}, sub) : null);
    }

    const FIELDS = ["requests", "errors", "tokens_in", "tokens_out", "cache_read_tokens", "cache_write_tokens",
      "reasoning_tokens", "cost_usd", "list_cost_usd", "saved_usd", "saved_by_cache_usd", "saved_by_subscription_usd",
      "cache_hits", "avg_latency_ms"];
    exportTable.addEventListener("click", () => {
      if (!last) return;
      const rows = last.summary[`by_${state.by}`] || [];
      download(`omniroute-usage-by-${state.by}.csv`, csv([state.by, ...FIELDS],
        rows.map((r) => [groupName(state.by, r), ...FIELDS.map((f) => r[f])])));
    });
    exportTime.addEventListener("click", () => {
      if (!last) return;
      download(`omniroute-usage-by-${last.bucket}.csv`, csv(["start", ...FIELDS],
        (last.summary.by_time || []).map((r) => [r.start, ...FIELDS.map((f) => r[f])])));
    });
    await load();
  },
};
