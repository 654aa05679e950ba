// Request log: every request with filters, newest first, a page at a time; a request's
// detail lists each target it tried and why each failed, and its stored bodies.

import { get, query } from "../api.js";
import { h, replace, clear, errorBox, badge, table, modal, field, input, select, segmented } from "../dom.js";
import * as fmt from "../format.js";

const RANGES = [["1h", "1 hour"], ["24h", "24 hours"], ["7d", "7 days"], ["30d", "30 days"]];
const STATUSES = [["", "any status"], ["ok", "succeeded"], ["error", "failed"], ["4xx", "4xx"], ["5xx", "5xx"], ["429", "429"]];
const PAGE = 50;
const EVERY_MS = 5000;

function statusBadge(record) {
  const failed = record.status >= 400 || record.error_class;
  return badge(String(record.status || "—"), failed ? (record.status >= 500 || !record.status ? "bad" : "warn") : "ok");
}

function served(record) {
  if (!record.provider) return h("span.muted", {}, "not routed");
  return h("span", {}, h("code", {}, `${record.provider}/${record.model}`));
}

function attemptsList(record) {
  const attempts = record.attempt_log || [];
  if (!attempts.length) return h("p.muted", {}, "No upstream was called (answered by the gateway itself, e.g. a cache hit or a refusal).");
  return h("ol.attempts", { "aria-label": "Attempts" }, attempts.map((a, i) => h("li", {},
    a.failure ? badge(a.status ? String(a.status) : "failed", a.failure === "CancelledError" ? "" : "bad") : badge(String(a.status || "ok"), "ok"),
    h("div", {}, h("div.cell-main", {}, `${i + 1}. ${a.target}`),
      h("div.cell-sub", {}, a.failure
        ? (a.failure === "CancelledError" ? "lost a hedging race (cancelled, not charged)" : `failed: ${a.failure}`)
        : "answered"),
      a.failure && a.error ? h("div.cell-sub.attempt-error", {}, a.error) : null),
    h("span.small.muted.nowrap", {}, a.ms ? fmt.ms(a.ms) : "not called"))));
}

function bodyBlock(title, text) {
  if (!text) return null;
  let shown = text;
  try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { shown = text; }
  return h("div.section", {}, h("h3", {}, title), h("pre.body", {}, shown));
}

async function openDetail(summary, names = { keys: new Map(), conns: new Map() }) {
  const body = h("div", {}, h("p.muted", {}, "Loading…"));
  modal({ title: `Request ${summary.request_id}`, content: [body], wide: true });
  let record = summary;
  try {
    record = await get(`/api/usage/logs/${encodeURIComponent(summary.id)}`);
  } catch (err) {
    body.append(errorBox(err));
  }
  const kv = (pairs) => h("dl.kv", {}, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  replace(body,
    h("p", {}, statusBadge(record), " ", record.error ? record.error : record.error_class || "succeeded"),
    kv([
      ["Time", fmt.dateTime(record.ts)], ["Endpoint", `${record.endpoint} (${record.client_format || "?"}${record.stream ? ", stream" : ""})`],
      ["Asked for", record.model_requested], ["Combo", record.combo], ["Served by", record.provider ? `${record.provider}/${record.model}` : null],
      ["Account", record.connection_id ? names.conns.get(record.connection_id) || record.connection_id : null],
      ["API key", record.api_key_id ? names.keys.get(record.api_key_id) || record.api_key_id : null], ["Client", record.user_agent],
      ["Latency", `${fmt.ms(record.latency_ms)} total · ${fmt.ms(record.ttfb_ms)} to first byte · ${fmt.ms(record.ttfc_ms)} to first token`],
      ["Tokens", `${fmt.int(record.prompt_tokens)} in · ${fmt.int(record.completion_tokens)} out · ${fmt.int(record.cached_tokens)} cache read${record.usage_estimated ? " (estimated)" : ""}`],
      ["Cost", `${fmt.usd(record.cost_usd)}${record.list_cost_usd !== null && record.list_cost_usd !== record.cost_usd ? ` (list price ${fmt.usd(record.list_cost_usd)})` : ""}${record.cache_hit ? " · cache hit" : ""}`],
    ]),
    h("h3.section", {}, `Attempts (${(record.attempt_log || []).length})`), attemptsList(record),
    bodyBlock("Request body", record.request_body), bodyBlock("Response body", record.response_body),
    record.has_bodies || record.request_body ? null : h("p.muted.small.section", {}, "Bodies are stored only with the log_bodies setting."));
}

export default {
  title: "Request log",
  async mount(root, ctx) {
    const params = ctx.params;
    const filters = {
      range: params.get("range") || "24h", status: params.get("status") || "", model: params.get("model") || "",
      provider: params.get("provider") || "", key: params.get("key") || "", connection: params.get("connection") || "",
    };
    const [providers, keys] = await Promise.all([
      get("/api/providers", { signal: ctx.signal }).catch(() => ({ providers: [] })),
      get("/api/keys", { signal: ctx.signal }).catch(() => ({ keys: [] }))]);
    const prefixes = [...new Set(providers.providers.map((c) => c.prefix))].sort();
    const keyNames = new Map(keys.keys.map((k) => [k.id, k.name]));
    const connNames = new Map(providers.providers.map((c) => [c.id, c.name]));
    const status = field("Status", select(STATUSES, filters.status, { name: "status" }));
    const model = field("Model", input({ type: "search", name: "model", value: filters.model, placeholder: "upstream model" }));
    const provider = field("Provider", select([["", "any"], ...prefixes.map((p) => [p, p])], filters.provider, { name: "provider" }));
    const key = field("API key", select([["", "any"], ...keys.keys.map((k) => [k.id, k.name])], filters.key, { name: "key" }));
    const account = field("Account", select([["", "any"], ...providers.providers.map((c) => [c.id, c.name])], filters.connection, { name: "connection" }));
    const live = h("input", { type: "checkbox", id: "log-live", checked: true });
    const tableSlot = h("div");
    const more = h("button.button", { type: "button", hidden: true }, "Load more");
    let rows = [], cursor = null;

    const controls = h("form.filters", { role: "search", "aria-label": "Filter requests" },
      h("div.field.seg", {}, h("span", {}, "Range"), segmented(RANGES, filters.range, (v) => { filters.range = v; load(); }, "Range")),
      status.el, model.el, provider.el, key.el, account.el,
      h("label.check", { for: "log-live" }, live, "Live"));
    controls.addEventListener("submit", (e) => { e.preventDefault(); load(); });
    for (const [name, f] of [["status", status], ["provider", provider], ["key", key], ["connection", account]]) {
      f.input.addEventListener("change", () => { filters[name] = f.input.value; load(); });
    }
    let typing = null;
    model.input.addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(() => { filters.model = model.input.value.trim(); load(); }, 350);
    });
    const errorSlot = h("div");
    replace(root, h("div.page-head", {}, h("h1", {}, "Request log")), controls, errorSlot, tableSlot, h("p", {}, more));

    function request(extra = {}) {
      return `/api/usage/logs${query({
        from: filters.range, status: filters.status, model: filters.model, provider: filters.provider,
        key: filters.key, connection: filters.connection, limit: PAGE, ...extra,
      })}`;
    }
    function remember() {
      const keep = Object.fromEntries(Object.entries(filters).filter(([, v]) => v));
      history.replaceState(null, "", `/dashboard/requests${Object.keys(keep).length ? "?" + new URLSearchParams(keep) : ""}`);
    }

    function draw() {
      replace(tableSlot, table([
        { title: "Time", cell: (r) => h("span.nowrap", { title: fmt.dateTime(r.ts) }, fmt.time(r.ts)) },
        { title: "Model", cell: (r) => h("div", {}, h("div.cell-main", {}, r.model_requested || r.endpoint),
          h("div.cell-sub", {}, served(r), r.combo ? ` · combo ${r.combo}` : "")) },
        { title: "Status", cell: (r) => h("div", {}, statusBadge(r), r.error_class ? h("div.cell-sub", {}, r.error_class) : null) },
        { title: "Tries", cell: (r) => String((r.attempt_log || []).length || r.attempts), num: true, hideNarrow: true },
        { title: "Latency", cell: (r) => fmt.ms(r.latency_ms), num: true, hideNarrow: true },
        { title: "Tokens", cell: (r) => `${fmt.compact(r.prompt_tokens)} / ${fmt.compact(r.completion_tokens)}`, num: true, hideNarrow: true },
        { title: "Cost", cell: (r) => r.cache_hit ? badge("cache", "info") : fmt.usd(r.cost_usd), num: true },
        { title: "Key", cell: (r) => r.api_key_id ? keyNames.get(r.api_key_id) || r.api_key_id : h("span.muted", {}, "—"), hideNarrow: true },
        { title: "Account", cell: (r) => r.connection_id ? connNames.get(r.connection_id) || r.connection_id : h("span.muted", {}, "—"), hideNarrow: true },
      ], rows, { empty: "No requests match these filters.", onRow: (r) => openDetail(r, { keys: keyNames, conns: connNames }), caption: "Requests" }));
      more.hidden = !cursor;
    }

    async function load() {
      remember();
      clear(errorSlot);
      try {
        const page = await get(request(), { signal: ctx.signal });
        rows = page.logs;
        cursor = page.next_cursor;
        draw();
      } catch (err) {
        if (err.name !== "AbortError") replace(errorSlot, errorBox(err));
      }
    }
    more.addEventListener("click", async () => {
      if (!cursor) return;
      try {
        const page = await get(request({ cursor }), { signal: ctx.signal });
        rows = rows.concat(page.logs);
        cursor = page.next_cursor;
        draw();
      } catch (err) {
        replace(errorSlot, errorBox(err));
      }
    });
    await load();
    ctx.poll(async () => {
      if (!live.checked || rows.length > PAGE || tableSlot.contains(document.activeElement)) return;
      await load();
    }, EVERY_MS);
  },
};
