// Cache: the response cache's numbers (each backend and layer), its entries, delete one,
// clear all.

import { get, del } from "../api.js";
import { h, replace, errorBox, table, busy, toast, confirmDialog, badge } from "../dom.js";
import * as fmt from "../format.js";

function kpi(label, value, sub) {
  return h("div.kpi", { role: "group", "aria-label": label }, h("div.label", {}, label), h("div.value", {}, value),
    sub ? h("div.sub", {}, sub) : null);
}

function partTable(title, parts) {
  const names = Object.keys(parts);
  if (!names.length) return null;
  const rows = names.map((name) => ({ name, stats: parts[name] }));
  return h("section.section", {}, h("h2", {}, title), table([
    { title: "Name", cell: (r) => h("code", {}, r.name) },
    { title: "Numbers", cell: (r) => r.stats.error ? h("span", {}, badge("error", "bad"), " ", r.stats.error)
      : h("dl.kv.small", {}, Object.entries(r.stats).map(([k, v]) => [h("dt", {}, k.replace(/_/g, " ")),
        h("dd", {}, typeof v === "number" ? (/bytes/.test(k) ? `${fmt.compact(v)}B` : fmt.int(v)) : String(v))])) },
  ], rows));
}

export default {
  title: "Cache",
  async mount(root, ctx) {
    const statsSlot = h("div");
    const entriesSlot = h("div");
    const clearAll = h("button.button.danger", { type: "button" }, "Clear the cache");
    replace(root, h("div.page-head", {}, h("h1", {}, "Response cache"), h("div.actions", {}, clearAll)),
      statsSlot, h("section.section", { "aria-labelledby": "cache-entries" },
        h("h2", { id: "cache-entries" }, "Entries (most recently used first)"), entriesSlot));

    async function load() {
      const [stats, entries] = await Promise.all([get("/api/cache/stats", { signal: ctx.signal }),
        get("/api/cache/entries?limit=100", { signal: ctx.signal })]);
      const exact = stats.exact;
      const looked = exact.hits + exact.misses;
      replace(statsSlot, h("div.kpis", {},
        kpi("Hit rate", fmt.percent(exact.hits, looked), `${fmt.int(exact.hits)} hits · ${fmt.int(exact.misses)} misses`),
        kpi("Entries", fmt.int(stats.semanticCache.memorySize + stats.semanticCache.dbSize),
          `memory ${fmt.int(stats.semanticCache.memorySize)} / ${fmt.int(stats.semanticCache.memoryMaxSize)} · stored ${fmt.int(stats.semanticCache.dbSize)}`),
        kpi("Stored", fmt.int(exact.stored), `${fmt.int(exact.bypasses)} bypassed · ${fmt.int(exact.dropped)} dropped`),
        kpi("Idempotency keys", fmt.int(stats.idempotency.activeKeys), `kept ${fmt.ms(stats.idempotency.windowMs)}`)),
        partTable("Backends", stats.backends), partTable("Layers", stats.layers));
      replace(entriesSlot, table([
        { title: "Model", cell: (e) => h("div", {}, h("div.cell-main", {}, e.model || "—"), h("div.cell-sub.mono", {}, e.key.slice(0, 16) + "…")) },
        { title: "Created", cell: (e) => e.created ? fmt.relative(e.created) : "—", hideNarrow: true },
        { title: "Hits", cell: (e) => fmt.int(e.hits), num: true },
        { title: "Size", cell: (e) => `${fmt.compact(e.bytes)}B`, num: true, hideNarrow: true },
        { title: "Saves", cell: (e) => e.cost === null || e.cost === undefined ? "—" : `${fmt.usd(e.cost)} a hit`, num: true, hideNarrow: true },
        { title: "Expires", cell: (e) => `in ${fmt.seconds(e.expires_in)}`, hideNarrow: true },
        { title: "Where", cell: (e) => e.backends.join(", "), hideNarrow: true },
        { title: "", cell: (e) => deleteButton(e) },
      ], entries.entries, { empty: "The cache is empty. Deterministic requests (temperature 0) are cached by default.", caption: "Cache entries" }));
    }

    function deleteButton(entry) {
      const button = h("button.button.small.danger", { type: "button", "aria-label": `Delete the entry for ${entry.model}` }, "Delete");
      button.addEventListener("click", () => busy(button, async () => {
        await del(`/api/cache/entries/${encodeURIComponent(entry.key)}`);
        toast("Entry deleted.");
        await load();
      }));
      return button;
    }

    clearAll.addEventListener("click", async () => {
      if (!(await confirmDialog("Clear the response cache?", "Every stored answer is removed from every backend and layer.", "Clear"))) return;
      await busy(clearAll, async () => {
        await del("/api/cache/stats");
        toast("The cache is empty.");
        await load();
      });
    });
    try {
      await load();
    } catch (err) {
      replace(statsSlot, errorBox(err));
    }
    ctx.poll(() => (root.contains(document.activeElement) && document.activeElement !== document.body ? null : load()), 10000);
  },
};
