// API keys: create (the key is shown once, then only its prefix), revoke, budgets,
// allowed models, expiry, rate limits.

import { get, post, patch, del } from "../api.js";
import {
  h, replace, clear, errorBox, badge, table, modal, confirmDialog, field, input, busy, toast, copy,
  emptyState,
} from "../dom.js";
import * as fmt from "../format.js";

const PERIODS = [["daily_usd", "Daily budget (USD)"], ["weekly_usd", "Weekly budget (USD)"],
                 ["monthly_usd", "Monthly budget (USD)"]];

function keyStatus(key, now) {
  if (key.revoked_at) return badge("revoked");
  if (key.expires_at && key.expires_at <= now) return badge("expired", "warn");
  if (key.limits_error) return badge("limits unreadable", "bad");
  return badge("active", "ok");
}

function budgetCell(key, budget) {
  const limits = key.limits || {};
  const lines = [];
  if (budget && budget.windows && budget.windows.length) {
    for (const w of budget.windows) {
      if (w.limit === null || w.limit === undefined) continue;
      const left = w.remaining;
      lines.push(h("div.small", {}, `${w.period}: `, h("strong", {}, `${fmt.usd(w.spend)} / ${fmt.usd(w.limit)}`),
        left !== null && left <= 0 ? badge("exhausted", "bad") : null));
    }
  } else {
    for (const [name, label] of PERIODS) {
      if (limits[name] !== undefined) lines.push(h("div.small", {}, `${label.split(" ")[0].toLowerCase()}: ${fmt.usd(limits[name])}`));
    }
  }
  if (limits.rpm) lines.push(h("div.cell-sub", {}, `${limits.rpm} requests/min`));
  if (limits.concurrency) lines.push(h("div.cell-sub", {}, `${limits.concurrency} at once`));
  return lines.length ? h("div", {}, lines) : h("span.muted", {}, "none");
}

function limitFields(key = null) {
  const limits = (key && key.limits) || {};
  const out = {};
  for (const [name, label] of PERIODS) {
    out[name] = field(label, input({ type: "number", min: "0", step: "any", name, value: limits[name] ?? "", inputmode: "decimal" }));
  }
  out.models = field("Allowed models", h("textarea", { name: "models", rows: 2, placeholder: "openai/*\nanthropic/claude-*" },
    (limits.models || []).join("\n")), "One pattern per line (* matches anything); empty: every model.", true);
  out.rpm = field("Requests per minute", input({ type: "number", min: "1", step: "1", name: "rpm", value: limits.rpm ?? "" }));
  out.concurrency = field("Requests at once", input({ type: "number", min: "1", step: "1", name: "concurrency", value: limits.concurrency ?? "" }));
  let expiry = "";
  if (key && key.expires_at) expiry = new Date(key.expires_at * 1000).toISOString().slice(0, 10);
  out.expires_at = field("Expires", input({ name: "expires_at", value: expiry, placeholder: "never, or 30d, 2026-12-31" }),
    "A date, a date and time, or a duration such as 30d; empty: never.");
  return out;
}

/** The limits object PATCH/POST take: a cleared field is null (removed). */
function limitsBody(fields, forCreate) {
  const limits = {};
  for (const name of ["daily_usd", "weekly_usd", "monthly_usd", "rpm", "concurrency"]) {
    const raw = fields[name].input.value.trim();
    if (raw === "") { if (!forCreate) limits[name] = null; continue; }
    const n = Number(raw);
    limits[name] = Number.isFinite(n) ? n : raw;
  }
  const models = fields.models.input.value.split(/[\n,]/).map((m) => m.trim()).filter(Boolean);
  if (models.length) limits.models = models;
  else if (!forCreate) limits.models = null;
  return limits;
}

function markErrors(err, fields) {
  const text = err.message || "";
  for (const [name, f] of Object.entries(fields)) {
    if (new RegExp(`\\b${name}\\b`).test(text) || err.param === name) f.setError(text);
  }
}

function showSecret(created) {
  const secret = h("code", { dataset: { secret: "" } }, created.key);
  const done = h("button.button.primary", { type: "button" }, "I stored it");
  const dlg = modal({
    title: `Key "${created.name}" created`,
    content: [h("p", {}, h("strong", {}, "Copy this key now. "), "It is shown only this once: omniroute keeps only its hash."),
      h("div.secret-once", {}, secret, h("button.button.small", { type: "button", onclick: () => copy(created.key, "Key copied") }, "Copy")),
      h("p.muted.small", {}, "Clients send it as Authorization: Bearer <key> (or x-api-key).")],
    actions: [done],
  });
  done.addEventListener("click", () => dlg.close());
  return dlg;
}

function openCreate(reload) {
  const name = field("Name", input({ name: "name", required: true, placeholder: "e.g. laptop, ci" }));
  const admin = h("input", { type: "checkbox", name: "admin", id: "key-admin" });
  const fields = { name, ...limitFields() };
  const result = h("div");
  const save = h("button.button.primary", { type: "submit", form: "create-key" }, "Create key");
  const form = h("form.form-grid", { id: "create-key", novalidate: true }, name.el,
    h("div.field", {}, h("span", {}, "Scope"), h("label.check", { for: "key-admin" }, admin, "Admin (may use the management API)")),
    ...Object.entries(fields).filter(([k]) => k !== "name").map(([, f]) => f.el), h("div.wide", {}, result));
  const dlg = modal({ title: "Create an API key", content: [form], actions: [save] });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!name.input.value.trim()) { name.setError("A key needs a name."); name.input.focus(); return; }
    busy(save, async () => {
      Object.values(fields).forEach((f) => f.setError(null));
      const body = { name: name.input.value.trim(), scopes: admin.checked ? ["admin"] : [] };
      const limits = limitsBody(fields, true);
      if (Object.keys(limits).length) body.limits = limits;
      if (fields.expires_at.input.value.trim()) body.expires_at = fields.expires_at.input.value.trim();
      let created;
      try {
        created = await post("/api/keys", body);
      } catch (err) {
        markErrors(err, fields);
        throw err;
      }
      dlg.close();
      reload();
      showSecret(created);
    }, result);
  });
}

function openEdit(key, reload) {
  const fields = limitFields(key);
  const result = h("div");
  const save = h("button.button.primary", { type: "submit", form: "edit-key" }, "Save");
  const form = h("form.form-grid", { id: "edit-key", novalidate: true }, Object.values(fields).map((f) => f.el),
    h("div.wide", {}, result));
  const dlg = modal({ title: `Limits of ${key.name}`, content: [form], actions: [save] });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(save, async () => {
      Object.values(fields).forEach((f) => f.setError(null));
      const body = { limits: limitsBody(fields, false), expires_at: fields.expires_at.input.value.trim() || null };
      try {
        await patch(`/api/keys/${encodeURIComponent(key.id)}`, body);
      } catch (err) {
        markErrors(err, fields);
        throw err;
      }
      toast(`Saved the limits of ${key.name}.`);
      dlg.close();
      reload();
    }, result);
  });
}

export default {
  title: "API keys",
  async mount(root, ctx) {
    const slot = h("div");
    const showRevoked = h("input", { type: "checkbox", id: "show-revoked" });
    const create = h("button.button.primary", { type: "button" }, "Create key");
    replace(root, h("div.page-head", {}, h("h1", {}, "API keys"),
      h("div.actions", {}, h("label.check", { for: "show-revoked" }, showRevoked, "Show revoked"), create)), slot);

    const load = async () => {
      const [keys, budgets] = await Promise.all([get("/api/keys", { signal: ctx.signal }),
        get("/api/usage/budget", { signal: ctx.signal })]);
      const byKey = new Map(budgets.budgets.map((b) => [b.keyId, b]));
      const now = Date.now() / 1000;
      const rows = keys.keys.filter((k) => showRevoked.checked || !k.revoked_at).reverse();
      if (!keys.keys.length) {
        replace(slot, h("div.card", {}, emptyState("No API keys yet",
          "Clients can call the gateway without a key while require_api_key is off. Create keys to tell clients apart and to give them budgets.",
          h("button.button.primary", { type: "button", onclick: () => openCreate(load) }, "Create key"))));
        return;
      }
      replace(slot, table([
        { title: "Name", cell: (k) => h("div", {}, h("div.cell-main", {}, k.name),
          h("div.cell-sub", {}, h("code", { dataset: { keyPrefix: "" } }, `${k.key_prefix}…`),
            k.scopes.includes("admin") ? [" ", badge("admin", "info")] : null)) },
        { title: "Status", cell: (k) => keyStatus(k, now) },
        { title: "Budgets and limits", cell: (k) => budgetCell(k, byKey.get(k.id)) },
        { title: "Models", cell: (k) => (k.limits.models && k.limits.models.length)
          ? h("div.small", {}, k.limits.models.join(", ")) : h("span.muted", {}, "all"), hideNarrow: true },
        { title: "Expires", cell: (k) => k.expires_at ? h("span", { title: fmt.dateTime(k.expires_at) }, fmt.relative(k.expires_at, now))
          : h("span.muted", {}, "never"), hideNarrow: true },
        { title: "Last used", cell: (k) => k.last_used_at ? fmt.relative(k.last_used_at, now) : h("span.muted", {}, "never"), hideNarrow: true },
        { title: "", cell: (k) => k.revoked_at ? h("span.muted.small", {}, `revoked ${fmt.relative(k.revoked_at, now)}`) : h("div.row-actions", {},
          h("button.button.small", { type: "button", onclick: () => openEdit(k, load) }, "Limits"),
          revokeButton(k)) },
      ], rows, { caption: "API keys" }));
    };

    function revokeButton(key) {
      const button = h("button.button.small.danger", { type: "button" }, "Revoke");
      button.addEventListener("click", async () => {
        if (!(await confirmDialog(`Revoke ${key.name}?`, "Clients using this key are refused from now on. This cannot be undone.", "Revoke"))) return;
        await busy(button, async () => {
          await del(`/api/keys/${encodeURIComponent(key.id)}`);
          toast(`Revoked ${key.name}.`);
          await load();
        });
      });
      return button;
    }

    create.addEventListener("click", () => openCreate(load));
    showRevoked.addEventListener("change", () => load().catch((err) => replace(slot, errorBox(err))));
    try {
      await load();
    } catch (err) {
      clear(slot);
      slot.append(errorBox(err));
    }
  },
};
