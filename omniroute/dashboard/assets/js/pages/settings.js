// Settings: every runtime setting with its description, default and current value (from
// GET /api/settings/schema); changed values are saved with PATCH /api/settings, and the
// API's refusal is shown beside the setting it names. Also: the admin password.

import { get, patch, put } from "../api.js";
import { h, replace, clear, errorBox, badge, field, input, select, busy, toast } from "../dom.js";

function control(row) {
  const id = `setting-${row.name}`;
  const pinned = row.source === "environment";
  if (row.type === "bool") {
    return h("input", { type: "checkbox", id, checked: Boolean(row.value), disabled: pinned, dataset: { setting: row.name } });
  }
  if (row.choices) {
    return select(row.choices, row.value, { id, disabled: pinned, dataset: { setting: row.name } });
  }
  if (row.type === "int" || row.type === "float") {
    return input({ type: "number", id, value: String(row.value), step: row.type === "int" ? "1" : "any",
      min: row.minimum !== undefined ? String(row.minimum) : null, max: row.maximum !== undefined ? String(row.maximum) : null,
      disabled: pinned, dataset: { setting: row.name } });
  }
  return input({ id, value: String(row.value), disabled: pinned, dataset: { setting: row.name } });
}

function valueOf(row, el) {
  if (row.type === "bool") return el.checked;
  if (row.type === "int" || row.type === "float") return el.value === "" ? el.value : Number(el.value);
  return el.value;
}

function shown(value) {
  return typeof value === "boolean" ? (value ? "on" : "off") : String(value);
}

function passwordCard() {
  const current = field("Current password", input({ type: "password", autocomplete: "current-password", name: "current_password" }));
  const next = field("New password", input({ type: "password", autocomplete: "new-password", name: "new_password", minlength: "8" }),
    "At least 8 characters.");
  const result = h("div");
  const save = h("button.button", { type: "submit" }, "Change password");
  const form = h("form.form-grid", { novalidate: true, "aria-label": "Change the admin password" }, current.el, next.el,
    h("div.wide", {}, result, save));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(save, async () => {
      await put("/api/auth/password", { current_password: current.input.value, new_password: next.input.value });
      current.input.value = next.input.value = "";
      toast("The admin password was changed.");
    }, result);
  });
  return h("section.card.section", { "aria-labelledby": "pw-head" }, h("h2", { id: "pw-head" }, "Admin password"), form);
}

export default {
  title: "Settings",
  async mount(root, ctx) {
    const slot = h("div");
    const save = h("button.button.primary", { type: "button", disabled: true }, "Save changes");
    const status = h("span.muted.small", { "aria-live": "polite" });
    const errorSlot = h("div");
    const filter = input({ type: "search", placeholder: "Find a setting", "aria-label": "Find a setting" });
    replace(root, h("div.page-head", {}, h("h1", {}, "Settings"), h("div.actions", {}, filter, status, save)),
      h("p.muted", {}, "Runtime settings apply at once, to every worker within a second. A value set by an environment variable (OMNIROUTE_<NAME>) is pinned and cannot be changed here."),
      errorSlot, slot, passwordCard());
    let rows = [];
    const controls = new Map();
    const errors = new Map();

    function changed() {
      const out = {};
      for (const row of rows) {
        const el = controls.get(row.name);
        if (!el || row.source === "environment") continue;
        const value = valueOf(row, el);
        if (String(value) !== String(row.value)) out[row.name] = value;
      }
      return out;
    }
    function refreshState() {
      const n = Object.keys(changed()).length;
      save.disabled = n === 0;
      status.textContent = n ? `${n} unsaved change${n === 1 ? "" : "s"}` : "";
    }

    function draw() {
      controls.clear();
      errors.clear();
      const sections = new Map();
      for (const row of rows) {
        if (!sections.has(row.section)) sections.set(row.section, []);
        sections.get(row.section).push(row);
      }
      replace(slot, [...sections].map(([title, items]) => h("section.card.settings-section", { "aria-label": title },
        h("h2", {}, title),
        items.map((row) => {
          const el = control(row);
          controls.set(row.name, el);
          el.addEventListener(row.type === "bool" || row.choices ? "change" : "input", refreshState);
          const error = h("div.field-error", { role: "alert", hidden: true });
          errors.set(row.name, error);
          return h("div.setting", { dataset: { name: row.name } },
            h("div", {}, h("label.name", { for: el.id }, row.name), h("div.desc", {}, row.description),
              h("div.meta", {}, `default ${shown(row.default)}`,
                row.source !== "default" ? badge(row.source === "environment" ? "pinned by environment" : "changed", row.source === "environment" ? "warn" : "info") : null)),
            h("div", {}, row.type === "bool" ? h("label.check", { for: el.id }, el, "on") : el, error));
        }))));
    }

    filter.addEventListener("input", () => {
      const text = filter.value.trim().toLowerCase();
      slot.querySelectorAll(".setting").forEach((el) => {
        el.hidden = Boolean(text) && !el.textContent.toLowerCase().includes(text);
      });
      slot.querySelectorAll(".settings-section").forEach((section) => {
        section.hidden = ![...section.querySelectorAll(".setting")].some((el) => !el.hidden);
      });
    });

    async function load() {
      rows = (await get("/api/settings/schema", { signal: ctx.signal })).settings;
      draw();
      refreshState();
    }

    save.addEventListener("click", () => busy(save, async () => {
      clear(errorSlot);
      errors.forEach((e) => { e.hidden = true; e.textContent = ""; });
      const values = changed();
      try {
        await patch("/api/settings", values);
      } catch (err) {
        // "max_attempts: expected a positive number ..." names the setting it is about
        const name = Object.keys(values).find((n) => err.message.startsWith(`${n}:`));
        if (name) {
          const box = errors.get(name);
          box.textContent = err.message;
          box.hidden = false;
          controls.get(name).setAttribute("aria-invalid", "true");
          controls.get(name).focus();
        }
        throw err;
      }
      toast(`Saved ${Object.keys(values).length} setting${Object.keys(values).length === 1 ? "" : "s"}.`);
      await load();
    }, errorSlot));
    try {
      await load();
    } catch (err) {
      replace(slot, errorBox(err));
    }
  },
};
