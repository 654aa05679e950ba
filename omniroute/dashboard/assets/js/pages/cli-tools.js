// CLI tools: the agent CLIs found on this machine (Claude Code, Codex, Gemini CLI...),
// setting one up to use omniroute and undoing it, and custom tools.
//
// The shapes are those of omniroute/web/clitools.py (docs/cli-tools.md):
//   GET  /api/cli-tools[?refresh=true] -> {tools: [{id, name, binary, version, installed,
//        protocol, isCustom, path, detectedBy, configPaths, configFound, configurable,
//        configured, backups}], summary: {total, installed, notFound, builtIn, custom}}
//   POST /api/cli-tools/{id}/configure {model, key | new_key, small_model?, base_url?}
//        -> {configured, changed, backup, baseUrl, model, smallModel, files, notes, key
//        (masked), keyId, keyCreated}
//   POST /api/cli-tools/{id}/restore {all?} -> {remaining, restored: [{backup, files:
//        [{path, action, changedSince, keptAt}]}]}
//   POST /api/cli-tools {binary, name?, id?, protocol?, configPaths?} -> the tool's row
//   DELETE /api/cli-tools/{id} -> {deleted}

import { get, post, del, optional } from "../api.js";
import {
  h, replace, errorBox, badge, table, modal, field, input, select, busy, toast, unavailable, confirmDialog,
} from "../dom.js";

const PROTOCOLS = [["openai", "OpenAI Chat Completions"], ["anthropic", "Anthropic Messages"],
                   ["responses", "OpenAI Responses"], ["gemini", "Gemini"]];

/** Marks the field the API named in its error (`param`), else nothing. */
function markField(err, fields) {
  const f = err && err.param && fields[err.param];
  if (f) f.setError(err.message);
  return Boolean(f);
}

function configuredView(answer) {
  const kv = (pairs) => h("dl.kv.small", {}, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  return h("div.success-box", { dataset: { configured: answer.id } },
    h("p", {}, h("strong", {}, answer.changed ? `${answer.name} now uses omniroute.` : `${answer.name} was set up this way already; nothing changed.`)),
    kv([
      ["Gateway", answer.baseUrl], ["Model", answer.model], ["Small model", answer.smallModel],
      ["Key", answer.key ? `${answer.key}${answer.keyCreated ? " (created for it)" : ""}` : null],
      ["Files", answer.files && answer.files.length ? h("ul.plain", {}, answer.files.map((f) => h("li", {}, h("code", {}, f)))) : null],
      ["Backup", answer.backup],
    ]),
    answer.notes && answer.notes.length ? h("ul.notes.small", {}, answer.notes.map((n) => h("li", {}, n))) : null);
}

async function openConfigure(tool, reload) {
  const [combos, aliases] = await Promise.all([get("/api/combos").catch(() => ({ combos: [] })),
    get("/api/models/alias").catch(() => ({ aliases: {} }))]);
  const listId = `cli-models-${tool.id}`;
  const names = [...combos.combos.map((c) => c.name), ...Object.keys(aliases.aliases)];
  const model = field("Model", input({ name: "model", list: listId, placeholder: "prefix/model, alias or combo" }),
    "What the tool asks for; omniroute routes it.", true);
  const smallModel = field("Small model (optional)", input({ name: "small_model", list: listId }),
    "For background work (Claude Code's Haiku, OpenCode's small model, Aider's weak model).", true);
  const suggestions = h("datalist", { id: listId }, names.map((v) => h("option", { value: v })));
  const createNew = h("input", { type: "radio", name: "key-source", id: "key-new", value: "new", checked: true });
  const pasteOwn = h("input", { type: "radio", name: "key-source", id: "key-own", value: "own" });
  const key = field("API key", input({ type: "password", name: "key", autocomplete: "off", disabled: true }),
    "One of this gateway's keys (sk-…); it is written into the tool's file.", true);
  for (const radio of [createNew, pasteOwn]) {
    radio.addEventListener("change", () => {
      key.input.disabled = createNew.checked;
      if (pasteOwn.checked) key.input.focus();
    });
  }
  const fields = { model, small_model: smallModel, key };
  const result = h("div", { "aria-live": "polite" });
  const save = h("button.button.primary", { type: "submit", form: "cli-configure" }, "Configure");
  const files = (tool.configPaths || []).length
    ? h("p.muted.small.wide.break", {}, "Writes ", tool.configPaths.map((p, i) => [i ? ", " : "", h("code", {}, p)]),
      ". Each file is backed up first; Restore puts it back.")
    : h("p.muted.small.wide", {}, "Its own configuration is backed up first; Restore puts it back.");
  const byHand = !tool.configurable;  // omniroute says what to enter instead of writing
  const form = h("form.form-grid", { id: "cli-configure", novalidate: true }, model.el, byHand ? null : smallModel.el, suggestions,
    byHand ? null : h("fieldset.wide", {}, h("legend", {}, "Key"),
      h("label.check", { for: "key-new" }, createNew, `Create a new key for it (named "cli:${tool.id}")`),
      h("label.check", { for: "key-own" }, pasteOwn, "Use a key I have")),
    byHand ? h("p.muted.small.wide", {}, `omniroute cannot write ${tool.name}'s settings; it tells you what to enter.`) : [key.el, files],
    h("div.wide", {}, result));
  if (byHand) save.textContent = "Show the settings";
  const cancel = h("button.button", { type: "button", onclick: () => dlg.close() }, "Cancel");
  const dlg = modal({ title: `Point ${tool.name} at omniroute`, content: [form], actions: [cancel, save] });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    Object.values(fields).forEach((f) => f.setError(null));
    if (!model.input.value.trim()) { model.setError("Choose the model the tool should use."); model.input.focus(); return; }
    const body = { model: model.input.value.trim() };
    if (smallModel.input.value.trim()) body.small_model = smallModel.input.value.trim();
    if (byHand) {
      // nothing to write, so no key is made: the answer names the settings
    } else if (createNew.checked) {
      body.new_key = true;
    } else if (key.input.value.trim()) {
      body.key = key.input.value.trim();
    } else {
      key.setError("Paste a key, or let omniroute create one.");
      key.input.focus();
      return;
    }
    busy(save, async () => {
      let answer;
      try {
        answer = await post(`/api/cli-tools/${encodeURIComponent(tool.id)}/configure`, body);
      } catch (err) {
        if (err.code === "not_configurable") {  // a tool set up by hand: what to enter
          replace(result, h("div.note", { role: "note", dataset: { byHand: "" } }, err.message));
          return;
        }
        if (err.code === "key_not_recoverable" || err.code === "invalid_api_key" || err.code === "key_required") key.setError(err.message);
        else markField(err, fields);
        throw err;
      }
      toast(answer.changed ? `${tool.name} now uses omniroute.` : `${tool.name} was set up already.`);
      replace(result, configuredView(answer));
      key.input.value = "";
      form.querySelectorAll("input").forEach((el) => { el.disabled = true; });
      save.hidden = true;
      cancel.textContent = "Done";
      cancel.focus();
      reload();
    }, result);
  });
  return dlg;
}

function openAddCustom(reload) {
  const binary = field("Command", input({ name: "binary", placeholder: "e.g. mytool", spellcheck: "false" }),
    "The program's name, looked up on PATH.");
  const name = field("Name (optional)", input({ name: "name", placeholder: "My tool" }));
  const protocol = field("Speaks", select(PROTOCOLS, "openai", { name: "protocol" }), "The client API it calls.");
  const paths = field("Configuration files (optional)", h("textarea", { name: "configPaths", rows: 2, placeholder: "~/.mytool/config.json" }),
    "One per line: the tool counts as installed when one exists.", true);
  const fields = { binary, name, protocol, configPaths: paths };
  const result = h("div");
  const save = h("button.button.primary", { type: "submit", form: "cli-add" }, "Add tool");
  const form = h("form.form-grid", { id: "cli-add", novalidate: true }, binary.el, name.el, protocol.el, paths.el, h("div.wide", {}, result));
  const dlg = modal({ title: "Add a custom CLI tool", content: [form], actions: [save] });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    Object.values(fields).forEach((f) => f.setError(null));
    if (!binary.input.value.trim()) { binary.setError("Name the command."); binary.input.focus(); return; }
    const body = { binary: binary.input.value.trim(), protocol: protocol.input.value };
    if (name.input.value.trim()) body.name = name.input.value.trim();
    const configPaths = paths.input.value.split("\n").map((p) => p.trim()).filter(Boolean);
    if (configPaths.length) body.configPaths = configPaths;
    busy(save, async () => {
      let added;
      try {
        added = await post("/api/cli-tools", body);
      } catch (err) {
        markField(err, fields);
        throw err;
      }
      toast(`Added ${added.name}${added.installed ? ` (found${added.version ? ", " + added.version : ""})` : " (not found on this machine)"}.`);
      dlg.close();
      reload();
    }, result);
  });
}

function restoredText(tool, answer) {
  const files = answer.restored.flatMap((r) => r.files);
  const put = files.filter((f) => f.action === "restored").length;
  const removed = files.filter((f) => f.action === "removed").length;
  const parts = [];
  if (put) parts.push(`${put} file${put === 1 ? "" : "s"} put back`);
  if (removed) parts.push(`${removed} removed (omniroute had created ${removed === 1 ? "it" : "them"})`);
  return `${tool.name}: ${parts.join(", ") || "restored"}${answer.remaining ? `; ${answer.remaining} earlier change${answer.remaining === 1 ? "" : "s"} left` : ""}.`;
}

export default {
  title: "CLI tools",
  async mount(root, ctx) {
    const slot = h("div");
    const refresh = h("button.button", { type: "button" }, "Look again");
    const add = h("button.button", { type: "button" }, "Add a custom tool");
    replace(root, h("div.page-head", {}, h("h1", {}, "CLI tools"), h("div.actions", {}, refresh, add)),
      h("p.muted", {}, "Coding agents on the machine omniroute runs on, and one-click setup to send them through omniroute (their own configuration files are rewritten, after a backup)."),
      slot);

    async function load(again = false) {
      const data = await optional(`/api/cli-tools${again ? "?refresh=true" : ""}`, { signal: ctx.signal });
      if (data === null) {
        refresh.hidden = add.hidden = true;
        replace(slot, unavailable("CLI tool detection",
          "This gateway has no /api/cli-tools route. The README's \"Point your clients at omniroute\" section shows each tool's setup by hand."));
        return;
      }
      const { tools, summary } = data;
      replace(slot,
        h("div.kpis", {}, [["Known", summary.total, `${summary.builtIn} built in · ${summary.custom} custom`],
          ["Installed", summary.installed, null], ["Not found", summary.notFound, null],
          ["Set up", tools.filter((t) => t.configured).length, "use omniroute now"]]
          .map(([label, value, sub]) => h("div.kpi", { role: "group", "aria-label": label }, h("div.label", {}, label),
            h("div.value", {}, String(value)), sub ? h("div.sub", {}, sub) : null))),
        table([
          { title: "Tool", cell: (t) => h("div", {}, h("div.cell-main", {}, t.name), h("div.cell-sub", {}, h("code", {}, t.binary || t.id),
            t.isCustom ? [" ", badge("custom", "info")] : null)) },
          { title: "Installed", cell: (t) => t.installed
            ? h("div", {}, badge("installed", "ok"), t.version ? h("div.cell-sub", {}, t.version) : null,
              t.path ? h("div.cell-sub.hide-narrow.break", {}, t.path) : t.detectedBy === "config" ? h("div.cell-sub", {}, "found by its configuration") : null)
            : badge("not found") },
          { title: "Speaks", cell: (t) => t.protocol || "—", hideNarrow: true },
          { title: "Set up", cell: (t) => t.configured
            ? h("div", {}, badge("uses omniroute", "info"), t.backups > 1 ? h("div.cell-sub", {}, `${t.backups} changes to undo`) : null)
            : t.configurable ? badge("not yet") : h("span.muted.small", {}, "by hand"), hideNarrow: true },
          { title: "", cell: (t) => actions(t) },
        ], tools, { caption: "CLI tools", empty: "No tools known." }));
    }

    function actions(tool) {
      const configure = h("button.button.small.primary", { type: "button", dataset: { configure: tool.id },
        disabled: !tool.installed && !tool.isCustom, title: tool.installed || tool.isCustom ? null : "Not installed on this machine",
        onclick: () => openConfigure(tool, load) }, tool.configurable ? "Configure" : "How to set up");
      const buttons = [configure];
      if (tool.configured) {
        const restore = h("button.button.small", { type: "button", dataset: { restore: tool.id } }, "Restore");
        restore.addEventListener("click", async () => {
          if (!(await confirmDialog(`Restore ${tool.name}'s own configuration?`,
            "The files are put back as they were before omniroute's last change.", "Restore", false))) return;
          await busy(restore, async () => {
            const answer = await post(`/api/cli-tools/${encodeURIComponent(tool.id)}/restore`, {});
            toast(restoredText(tool, answer));
            await load();
          });
        });
        buttons.push(restore);
      }
      if (tool.isCustom) {
        const remove = h("button.button.small.danger", { type: "button" }, "Remove");
        remove.addEventListener("click", async () => {
          if (!(await confirmDialog(`Remove ${tool.name}?`, "omniroute forgets this tool; its files are not touched.", "Remove"))) return;
          await busy(remove, async () => {
            await del(`/api/cli-tools/${encodeURIComponent(tool.id)}`);
            toast(`Removed ${tool.name}.`);
            await load();
          });
        });
        buttons.push(remove);
      }
      return h("div.row-actions", {}, buttons);
    }

    refresh.addEventListener("click", () => busy(refresh, async () => {
      refresh.textContent = "Looking…";
      await load(true);
    }));
    add.addEventListener("click", () => openAddCustom(load));
    try {
      await load();
    } catch (err) {
      replace(slot, errorBox(err));
    }
  },
};
