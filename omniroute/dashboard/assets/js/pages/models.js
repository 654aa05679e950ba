// Models: aliases (one name for another) and combos (several models or accounts under
// one name), with an editor for steps and strategy, reordering, and the API's own
// validation messages shown beside the step they are about.

import { get, post, put, del } from "../api.js";
import {
  h, replace, clear, errorBox, table, field, input, select, busy, toast, confirmDialog, emptyState, badge,
} from "../dom.js";

const FALLBACK_STRATEGIES = ["priority", "round-robin", "weighted", "random", "least-used", "fill-first",
  "cost-optimized", "latency-optimized", "p2c"];

function stepText(step) {
  if (typeof step === "string") return step;
  const model = step.provider && !String(step.model).startsWith(`${step.provider}/`) ? `${step.provider}/${step.model}` : step.model;
  const extra = [step.connection ? `on ${step.connection}` : null, step.weight ? `weight ${step.weight}` : null].filter(Boolean);
  return extra.length ? `${model} (${extra.join(", ")})` : model;
}

// ------------------------------------------------------------------ the combo editor

function comboEditor({ combo, strategies, connections, suggestions, onSaved, onCancel }) {
  const steps = (combo ? combo.steps : ["", ""]).map((step) => typeof step === "string"
    ? { model: step, connection: "", weight: "" }
    : { model: step.provider && !String(step.model).startsWith(`${step.provider}/`) ? `${step.provider}/${step.model}` : step.model,
        connection: step.connection || "", weight: step.weight ?? "" });
  const name = field("Name", input({ name: "combo-name", value: combo ? combo.name : "", placeholder: "e.g. coder" }),
    "Clients ask for this name as the model.");
  const strategy = field("Strategy", select(strategies, combo ? combo.strategy : "priority", { name: "strategy" }),
    "How the steps are ordered for each request.");
  const list = h("ol.steps", { "aria-label": "Steps" });
  const errorSlot = h("div", { "aria-live": "polite" });
  const datalistId = `models-${Math.random().toString(36).slice(2)}`;
  const datalist = h("datalist", { id: datalistId }, suggestions.map((v) => h("option", { value: v })));
  let focusAfter = null;

  function drawSteps() {
    clear(list);
    steps.forEach((step, i) => {
      const model = input({ value: step.model, placeholder: "prefix/model, alias or combo", list: datalistId,
        "aria-label": `Step ${i + 1} model`, dataset: { step: String(i + 1) } });
      model.addEventListener("input", () => { step.model = model.value; });
      const conn = select([["", "any account"], ...connections.map((c) => [c.name, `${c.name} (${c.prefix})`])], step.connection,
        { "aria-label": `Step ${i + 1} account`, class: "connection" });
      conn.addEventListener("change", () => { step.connection = conn.value; });
      const weight = input({ type: "number", min: "0", step: "any", value: step.weight, placeholder: "weight",
        "aria-label": `Step ${i + 1} weight`, class: "weight" });
      weight.addEventListener("input", () => { step.weight = weight.value; });
      const move = (delta, label) => h("button.button.small", {
        type: "button", "aria-label": `Move step ${i + 1} ${label}`, disabled: i + delta < 0 || i + delta >= steps.length,
        onclick: () => {
          const [item] = steps.splice(i, 1);
          steps.splice(i + delta, 0, item);
          focusAfter = `[aria-label="Move step ${i + 1 + delta} ${label}"]`;
          drawSteps();
        },
      }, label === "up" ? "↑" : "↓");
      const remove = h("button.button.small.danger", { type: "button", "aria-label": `Remove step ${i + 1}`,
        disabled: steps.length === 1, onclick: () => { steps.splice(i, 1); drawSteps(); } }, "✕");
      list.append(h("li.step", { dataset: { index: String(i + 1) } }, h("span.index", {}, String(i + 1)), model, conn, weight,
        h("div.row-actions", {}, move(-1, "up"), move(1, "down"), remove)));
    });
    if (focusAfter) {
      const target = list.querySelector(focusAfter);
      if (target && !target.disabled) target.focus();
      focusAfter = null;
    }
  }
  drawSteps();

  const addStep = h("button.button.small", { type: "button", onclick: () => {
    steps.push({ model: "", connection: "", weight: "" });
    drawSteps();
    list.querySelector(`li:last-child input`).focus();
  } }, "Add step");
  const save = h("button.button.primary", { type: "submit" }, combo ? "Save combo" : "Create combo");
  const cancel = h("button.button", { type: "button", onclick: onCancel }, "Cancel");
  const form = h("form.card", { novalidate: true, "aria-label": combo ? `Edit combo ${combo.name}` : "New combo" },
    h("div.card-head", {}, h("h2", {}, combo ? `Edit ${combo.name}` : "New combo")),
    h("div.form-grid", {}, name.el, strategy.el),
    h("h3.section", {}, "Steps, tried in this order (for priority)"), list, datalist,
    h("p", {}, addStep), errorSlot, h("div.row-actions", {}, cancel, save));

  function body() {
    return {
      name: name.input.value.trim(),
      strategy: strategy.input.value,
      steps: steps.map((step) => {
        const weight = step.weight === "" ? null : Number(step.weight);
        if (!step.connection && weight === null) return step.model.trim();
        const out = { model: step.model.trim() };
        if (step.connection) out.connection = step.connection;
        if (weight !== null) out.weight = Number.isFinite(weight) ? weight : step.weight;
        return out;
      }),
    };
  }
  function showError(err) {
    clear(errorSlot);
    list.querySelectorAll("li").forEach((li) => li.removeAttribute("aria-invalid"));
    name.setError(null);
    // "step 2 ('x/y'): unknown provider ...; step 3 ...": each message beside its step
    const parts = String(err.message).split(/;\s*(?=step \d+)/);
    let placed = false;
    for (const part of parts) {
      const match = /^step (\d+)/.exec(part);
      const li = match && list.querySelector(`li[data-index="${match[1]}"]`);
      if (li) {
        li.setAttribute("aria-invalid", "true");
        li.append(h("div.field-error", { role: "alert", class: "wide" }, part));
        placed = true;
      }
    }
    if (/name/.test(err.message) && !placed) name.setError(err.message);
    errorSlot.append(errorBox(err));
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    list.querySelectorAll(".field-error").forEach((e) => e.remove());
    busy(save, async () => {
      try {
        const saved = combo ? await put(`/api/combos/${encodeURIComponent(combo.id)}`, body())
          : await post("/api/combos", body());
        toast(`${combo ? "Saved" : "Created"} combo ${saved.name}.`);
        onSaved(saved);
      } catch (err) {
        showError(err);
      }
    });
  });
  return form;
}

// ------------------------------------------------------------------ the page

export default {
  title: "Models",
  async mount(root, ctx) {
    const aliasSlot = h("div");
    const comboSlot = h("div");
    const editorSlot = h("div");
    const newCombo = h("button.button.primary", { type: "button", disabled: true }, "New combo");  // until loaded
    replace(root, h("div.page-head", {}, h("h1", {}, "Models"), h("div.actions", {}, newCombo)),
      h("section.section", { "aria-labelledby": "combos-head" },
        h("div.card-head", {}, h("h2", { id: "combos-head" }, "Combos")),
        h("p.muted", {}, "A combo is one model name for several models or accounts: if one fails, the next serves the request."),
        editorSlot, comboSlot),
      h("section.section", { "aria-labelledby": "aliases-head" },
        h("div.card-head", {}, h("h2", { id: "aliases-head" }, "Aliases")), aliasSlot));

    let data = null;
    const load = async () => {
      const [aliases, combos, providers, schema] = await Promise.all([
        get("/api/models/alias", { signal: ctx.signal }), get("/api/combos", { signal: ctx.signal }),
        get("/api/providers", { signal: ctx.signal }), get("/api/settings/schema", { signal: ctx.signal })]);
      const strategyRow = schema.settings.find((row) => row.name === "account_strategy");
      data = {
        aliases: aliases.aliases, combos: combos.combos, connections: providers.providers,
        strategies: (strategyRow && strategyRow.choices) || FALLBACK_STRATEGIES,
      };
      newCombo.disabled = false;
      drawCombos();
      drawAliases();
    };

    function suggestions() {
      const prefixes = [...new Set(data.connections.map((c) => `${c.prefix}/`))];
      return [...prefixes, ...Object.keys(data.aliases), ...data.combos.map((c) => c.name)];
    }

    function openEditor(combo = null) {
      replace(editorSlot, comboEditor({
        combo, strategies: data.strategies, connections: data.connections, suggestions: suggestions(),
        onSaved: async () => { clear(editorSlot); await load(); },
        onCancel: () => clear(editorSlot),
      }));
      editorSlot.querySelector("input").focus();
    }
    newCombo.addEventListener("click", () => data && openEditor());

    function drawCombos() {
      if (!data.combos.length) {
        replace(comboSlot, h("div.card", {}, emptyState("No combos yet", "Build one from two or more models.",
          h("button.button.primary", { type: "button", onclick: () => openEditor() }, "New combo"))));
        return;
      }
      replace(comboSlot, table([
        { title: "Name", cell: (c) => h("code.cell-main", {}, c.name) },
        { title: "Strategy", cell: (c) => badge(c.strategy, "info") },
        { title: "Steps", cell: (c) => h("ol.small", {}, c.steps.map((step) => h("li", {}, stepText(step)))) },
        { title: "", cell: (c) => h("div.row-actions", {},
          h("button.button.small", { type: "button", onclick: () => openEditor(c) }, "Edit"),
          deleteButton(`combo ${c.name}`, `/api/combos/${encodeURIComponent(c.id)}`)) },
      ], data.combos, { caption: "Combos" }));
    }

    function deleteButton(what, path) {
      const button = h("button.button.small.danger", { type: "button" }, "Delete");
      button.addEventListener("click", async () => {
        if (!(await confirmDialog(`Delete ${what}?`, "Clients asking for it get an unknown-model error from now on.", "Delete"))) return;
        await busy(button, async () => {
          await del(path);
          toast(`Deleted ${what}.`);
          await load();
        });
      });
      return button;
    }

    function drawAliases() {
      const alias = field("Alias", input({ name: "alias", placeholder: "e.g. fast" }));
      const target = field("Target", input({ name: "target", placeholder: "prefix/model" }));
      const errorSlot = h("div");
      const add = h("button.button.primary", { type: "submit" }, "Add alias");
      const form = h("form.filters", { novalidate: true, "aria-label": "Add an alias" }, alias.el, target.el, add);
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        busy(add, async () => {
          await post("/api/models/alias", { alias: alias.input.value.trim(), target: target.input.value.trim() });
          toast(`Alias ${alias.input.value.trim()} saved.`);
          await load();
        }, errorSlot);
      });
      const rows = Object.entries(data.aliases).map(([name, to]) => ({ name, to }));
      replace(aliasSlot, h("div.card", {}, form, errorSlot, table([
        { title: "Alias", cell: (a) => h("code", {}, a.name) },
        { title: "Target", cell: (a) => h("code", {}, a.to) },
        { title: "", cell: (a) => h("div.row-actions", {}, deleteButton(`alias ${a.name}`, `/api/models/alias/${encodeURIComponent(a.name)}`)) },
      ], rows, { empty: "No aliases.", caption: "Aliases" })));
    }

    try {
      await load();
      if (ctx.params.get("new") === "combo") openEditor();
    } catch (err) {
      replace(comboSlot, errorBox(err));
    }
  },
};
