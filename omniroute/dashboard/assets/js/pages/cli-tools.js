// CLI tools: the agent CLIs found on this machine (Claude Code, Codex, Gemini CLI...) and
// one-click setup to use omniroute (GET /api/cli-tools, POST /api/cli-tools/{id}/configure
// and /restore). A gateway without those routes shows a clear "not available" state.

import { get, post, optional } from "../api.js";
import { h, replace, errorBox, badge, table, modal, field, input, busy, toast, unavailable, confirmDialog, emptyState } from "../dom.js";

function resultView(answer) {
  if (!answer || typeof answer !== "object") return null;
  const entries = Object.entries(answer).filter(([, v]) => v !== null && v !== undefined && typeof v !== "object");
  const lists = Object.entries(answer).filter(([, v]) => Array.isArray(v) && v.length);
  return h("div.success-box", {}, h("dl.kv.small", {}, entries.map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]),
    lists.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v.map((x) => typeof x === "object" ? JSON.stringify(x) : String(x)).join(", "))])));
}

async function openConfigure(tool, reload) {
  const [combos, aliases] = await Promise.all([get("/api/combos").catch(() => ({ combos: [] })),
    get("/api/models/alias").catch(() => ({ aliases: {} }))]);
  const listId = `cli-models-${tool.id}`;
  const model = field("Model", input({ name: "model", list: listId, placeholder: "prefix/model, alias or combo" }),
    "What the tool asks for; omniroute routes it.", true);
  const suggestions = h("datalist", { id: listId }, [...combos.combos.map((c) => c.name), ...Object.keys(aliases.aliases)]
    .map((v) => h("option", { value: v })));
  const createNew = h("input", { type: "radio", name: "key-source", id: "key-new", value: "new", checked: true });
  const pasteOwn = h("input", { type: "radio", name: "key-source", id: "key-own", value: "own" });
  const key = field("API key", input({ type: "password", name: "api_key", autocomplete: "off", disabled: true }),
    "An omniroute key (sk-or-…).", true);
  for (const radio of [createNew, pasteOwn]) radio.addEventListener("change", () => { key.input.disabled = createNew.checked; });
  const result = h("div", { "aria-live": "polite" });
  const save = h("button.button.primary", { type: "submit", form: "cli-configure" }, "Configure");
  const form = h("form.form-grid", { id: "cli-configure", novalidate: true }, model.el, suggestions,
    h("fieldset.wide", {}, h("legend", {}, "Key"),
      h("label.check", { for: "key-new" }, createNew, `Create a new key named "${tool.id}" for it`),
      h("label.check", { for: "key-own" }, pasteOwn, "Use a key I have")),
    key.el, h("p.muted.small.wide", {}, `Its own configuration is backed up first; Restore puts it back.`), h("div.wide", {}, result));
  const dlg = modal({ title: `Point ${tool.name} at omniroute`, content: [form], actions: [save] });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!model.input.value.trim()) { model.setError("Choose the model the tool should use."); return; }
    model.setError(null);
    busy(save, async () => {
      let secret = key.input.value.trim();
      if (createNew.checked) {
        secret = (await post("/api/keys", { name: tool.id })).key;
      } else if (!secret) {
        key.setError("Paste a key, or let the dashboard create one.");
        return;
      }
      const answer = await post(`/api/cli-tools/${encodeURIComponent(tool.id)}/configure`,
        { model: model.input.value.trim(), api_key: secret });
      toast(`${tool.name} now uses omniroute.`);
      replace(result, resultView(answer));
      save.hidden = true;
      reload();
    }, result);
  });
  return dlg;
}

export default {
  title: "CLI tools",
  async mount(root, ctx) {
    const slot = h("div");
    replace(root, h("div.page-head", {}, h("h1", {}, "CLI tools")),
      h("p.muted", {}, "Coding agents installed on this machine, and one-click setup to send them through omniroute."), slot);

    async function load() {
      const data = await optional("/api/cli-tools", { signal: ctx.signal });
      if (data === null) {
        replace(slot, unavailable("CLI tool detection",
          "This gateway has no /api/cli-tools route yet. The README's \"Point your clients at omniroute\" section shows each tool's setup by hand."));
        return;
      }
      const tools = data.tools || [];
      const sum = data.summary || {};
      if (!tools.length) {
        replace(slot, h("div.card", {}, emptyState("No tools known", "")));
        return;
      }
      replace(slot,
        h("div.kpis", {}, [["Known", sum.total ?? tools.length], ["Installed", sum.installed ?? tools.filter((t) => t.installed).length],
          ["Not found", sum.notFound ?? tools.filter((t) => !t.installed).length], ["Custom", sum.custom ?? tools.filter((t) => t.isCustom).length]]
          .map(([label, value]) => h("div.kpi", { role: "group", "aria-label": label }, h("div.label", {}, label), h("div.value", {}, String(value))))),
        table([
          { title: "Tool", cell: (t) => h("div", {}, h("div.cell-main", {}, t.name), h("div.cell-sub", {}, h("code", {}, t.binary || t.id),
            t.isCustom ? [" ", badge("custom", "info")] : null)) },
          { title: "Installed", cell: (t) => t.installed ? h("div", {}, badge("installed", "ok"), t.version ? h("div.cell-sub", {}, t.version) : null)
            : badge("not found") },
          { title: "Speaks", cell: (t) => t.protocol || "—", hideNarrow: true },
          { title: "Set up", cell: (t) => t.configured === true ? badge("uses omniroute", "info") : t.configured === false ? badge("not yet") : h("span.muted", {}, "—"), hideNarrow: true },
          { title: "", cell: (t) => actions(t) },
        ], tools, { caption: "CLI tools" }));
    }

    function actions(tool) {
      const configure = h("button.button.small.primary", { type: "button", disabled: !tool.installed && !tool.isCustom,
        onclick: () => openConfigure(tool, load) }, "Configure");
      const restore = h("button.button.small", { type: "button" }, "Restore");
      restore.addEventListener("click", async () => {
        if (!(await confirmDialog(`Restore ${tool.name}'s own configuration?`, "The backup made before configuring it is put back.", "Restore", false))) return;
        await busy(restore, async () => {
          await post(`/api/cli-tools/${encodeURIComponent(tool.id)}/restore`, {});
          toast(`${tool.name}'s configuration restored.`);
          await load();
        });
      });
      return h("div.row-actions", {}, configure, restore);
    }

    try {
      await load();
    } catch (err) {
      replace(slot, errorBox(err));
    }
  },
};
