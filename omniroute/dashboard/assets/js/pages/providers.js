// Providers and accounts: add from presets and test; enable, disable, limits, priority;
// each account's live state (cooling, breaker, quota, needs sign-in); subscription
// sign-in (OAuth: a URL and a pasted code, or a device code).

import { get, post, put, del, optional } from "../api.js";
import {
  h, replace, clear, errorBox, badge, table, modal, confirmDialog, field, input, select,
  busy, toast, unavailable, emptyState, copy,
} from "../dom.js";
import * as fmt from "../format.js";

const EVERY_MS = 10000;
const LIMIT_FIELDS = [["max_concurrency", "Max concurrency", "Requests in flight at once"],
                      ["rpm", "Requests per minute", "Started per rolling minute"],
                      ["weight", "Weight", "For the weighted strategy"]];

// ------------------------------------------------------------------ state cells

function stateCell(conn, live, test) {
  const parts = [];
  if (!conn.active) parts.push(badge("disabled"));
  else if (!conn.usable) parts.push(badge("unusable", "bad"));
  else if (live) parts.push(badge(live.status, live.status === "healthy" ? "ok" : live.status === "down" ? "bad" : "warn"));
  if (conn.oauth) {
    const o = conn.oauth;
    parts.push(" ", badge(o.status === "needs_sign_in" ? "needs sign-in" : o.status === "expired" ? "token expired" : "signed in",
      o.status === "needs_sign_in" ? "bad" : o.status === "expired" ? "warn" : "info"));
  }
  const notes = [];
  if (conn.error) notes.push(conn.error);
  if (live) {
    if (live.terminal_reason) notes.push(`out of service: ${live.terminal_reason}`);
    if (live.cooling_until) notes.push(`cooling until ${fmt.time(live.cooling_until)} (${fmt.seconds(live.cooldown_left)})`);
    if (live.consecutive_failures && !live.cooling_until) notes.push(`${live.consecutive_failures} failures in a row`);
    if (live.last_error && live.status !== "healthy") notes.push(live.last_error);
  }
  if (test) notes.push(test.ok ? `test ok · ${test.models} models · ${fmt.ms(test.latency_ms)}` : `test failed: ${test.error}`);
  return h("div", {}, parts, notes.map((n) => h("div.cell-sub", {}, n)));
}

function breakerCell(breaker) {
  if (!breaker) return badge("closed", "ok");
  const kind = breaker.state === "closed" ? "ok" : breaker.state === "open" ? "bad" : "warn";
  return h("div", {}, badge(breaker.state.replace("_", "-"), kind),
    breaker.state !== "closed" && breaker.retry_in ? h("div.cell-sub", {}, `trial in ${fmt.seconds(breaker.retry_in)}`) : null,
    breaker.consecutive_failures ? h("div.cell-sub", {}, `${breaker.consecutive_failures}/${breaker.threshold} failures`) : null);
}

/** A quota window's name as people say it: Codex's 300-minute window is "5 h". */
function windowName(w) {
  const minutes = w.window_minutes;
  if (!minutes) return w.name.replace(/_/g, " ");
  if (minutes % 1440 === 0) return minutes === 10080 ? "week" : `${minutes / 1440} d`;
  return minutes % 60 === 0 ? `${minutes / 60} h` : `${minutes} min`;
}

/** What is left in one window: units, else a percentage, else nothing known. */
function windowLeft(w) {
  if (w.unlimited) return "unlimited";
  if (w.remaining !== null && w.remaining !== undefined) {
    return `${fmt.int(w.remaining)}${w.limit !== null && w.limit !== undefined ? " / " + fmt.int(w.limit) : ""} left`;
  }
  if (w.used_percent !== null && w.used_percent !== undefined) return `${Math.max(0, Math.round(100 - w.used_percent))}% left`;
  return w.status ? w.status.replace(/_/g, " ") : "?";
}

/** A subscription's quota as /api/rate-limits reports it (Quota.snapshot(): plan,
 * exhausted, resets_at, reason, windows [{name, used_percent, remaining, limit,
 * resets_at, window_minutes, unlimited, status}]). */
function quotaCell(live) {
  const quota = live && live.quota;
  if (!quota) return h("span.muted", {}, "—");
  const lines = [];
  if (quota.exhausted) {
    lines.push(h("div", {}, badge("spent", "bad"), quota.resets_at ? ` resets ${fmt.relative(quota.resets_at)}` : null));
  }
  for (const w of quota.windows || []) {
    lines.push(h("div.small", { dataset: { window: w.name } }, `${windowName(w)}: `, h("strong", {}, windowLeft(w)),
      w.resets_at ? h("span.muted", {}, ` · resets ${fmt.relative(w.resets_at)}`) : null));
  }
  if (!lines.length) lines.push(h("span.muted.small", {}, "not reported yet"));
  if (quota.plan) lines.push(h("div.cell-sub", {}, `plan: ${quota.plan}`));
  return h("div", {}, lines);
}

function limitsCell(conn, live) {
  const s = conn.settings || {};
  const bits = [];
  if (s.max_concurrency) bits.push(`${s.max_concurrency} at once`);
  if (s.rpm) bits.push(`${s.rpm} rpm`);
  if (s.weight !== undefined && s.weight !== null) bits.push(`weight ${s.weight}`);
  return h("div", {}, bits.length ? bits.join(" · ") : h("span.muted", {}, "none"),
    live && live.in_flight ? h("div.cell-sub", {}, `${live.in_flight} in flight`) : null);
}

// ------------------------------------------------------------------ add / edit

function fieldErrors(err, fields) {
  // the API names the field in its message ("prefix must be ...", "rpm: ..."); mark it
  const text = (err && err.message) || "";
  for (const [name, f] of Object.entries(fields)) {
    if (err.param === name || new RegExp(`\\b${name}\\b`).test(text)) f.setError(text);
  }
}

function limitInputs(settings = {}) {
  const out = {};
  for (const [name, label, hint] of LIMIT_FIELDS) {
    out[name] = field(label, input({ type: "number", min: name === "weight" ? "0" : "1", step: name === "weight" ? "any" : "1",
      value: settings[name] ?? "", name, inputmode: "numeric" }), hint);
  }
  return out;
}

function numberOrNull(value) {
  if (value === "" || value === null || value === undefined) return null;
  const n = Number(value);
  return Number.isFinite(n) ? n : value; // the API says what is wrong with it
}

function openAdd(types, reload) {
  const options = [];
  for (const type of types) {
    for (const preset of type.presets) options.push([`preset:${type.type}:${preset.name}`, `${preset.name} — ${preset.description || type.type}`]);
  }
  for (const type of types) options.push([`type:${type.type}`, `Custom ${type.type} endpoint (${type.format})`]);
  const choice = field("Service", select(options, options[0] && options[0][0], { name: "service" }),
    "A preset fills in the base URL and the prefix.", true);
  const name = field("Name", input({ name: "name", placeholder: "e.g. work account" }));
  const prefix = field("Prefix", input({ name: "prefix" }), "Models are named prefix/model.");
  const baseUrl = field("Base URL", input({ name: "base_url", type: "text", inputmode: "url" }), null, true);
  const apiKey = field("API key", input({ type: "password", name: "api_key", autocomplete: "off" }),
    "Stored encrypted; never shown again in full.", true);
  const priority = field("Priority", input({ type: "number", name: "priority", value: "0", step: "1" }),
    "Lower is tried first among one prefix's accounts.");
  const limits = limitInputs();
  const fields = { name, prefix, base_url: baseUrl, api_key: apiKey, priority, ...limits };
  const result = h("div", { "aria-live": "polite" });

  function current() {
    const [kind, type, preset] = choice.input.value.split(":");
    const typeInfo = types.find((t) => t.type === type);
    const presetInfo = kind === "preset" ? typeInfo.presets.find((p) => p.name === preset) : null;
    return { kind, type, preset, typeInfo, presetInfo };
  }
  function refreshDefaults() {
    const { typeInfo, presetInfo } = current();
    prefix.input.placeholder = presetInfo ? presetInfo.prefix : typeInfo.default_prefix || typeInfo.type;
    baseUrl.input.value = presetInfo ? presetInfo.base_url : "";
    baseUrl.input.placeholder = presetInfo ? presetInfo.base_url : "the API address, ending in /v1";
    apiKey.input.required = presetInfo ? presetInfo.needs_api_key : true;
    apiKey.el.querySelector("label").textContent = apiKey.input.required ? "API key" : "API key (optional)";
  }
  choice.input.addEventListener("change", refreshDefaults);
  refreshDefaults();

  function spec() {
    const { kind, type, preset, presetInfo } = current();
    const body = kind === "preset" ? { preset, type } : { type };
    if (name.input.value.trim()) body.name = name.input.value.trim();
    if (prefix.input.value.trim()) body.prefix = prefix.input.value.trim();
    const url = baseUrl.input.value.trim();
    if (url && (!presetInfo || url !== presetInfo.base_url)) body.base_url = url;
    if (apiKey.input.value) body.api_key = apiKey.input.value;
    body.priority = numberOrNull(priority.input.value) ?? 0;
    for (const [key] of LIMIT_FIELDS) {
      const v = numberOrNull(limits[key].input.value);
      if (v !== null) body[key] = v;
    }
    return body;
  }
  function resetErrors() { Object.values(fields).forEach((f) => f.setError(null)); clear(result); }

  const test = h("button.button", { type: "button" }, "Test connection");
  const save = h("button.button.primary", { type: "submit", form: "add-provider" }, "Add provider");
  const form = h("form.form-grid", { id: "add-provider", novalidate: true },
    choice.el, name.el, prefix.el, baseUrl.el, apiKey.el, priority.el,
    ...Object.values(limits).map((f) => f.el), h("div.wide", {}, result));
  const dlg = modal({ title: "Add a provider account", content: [form], actions: [test, save] });
  test.addEventListener("click", () => busy(test, async () => {
    resetErrors();
    test.textContent = "Testing…";
    const answer = await post("/api/providers/validate", spec());
    if (!answer.valid) {
      result.append(errorBox({ message: answer.error }));
      fieldErrors({ message: answer.error }, fields);
    } else if (!answer.ok) {
      result.append(errorBox({ message: `The upstream answered ${answer.status || "an error"}: ${answer.error}` }));
    } else {
      result.append(h("div.success-box", {}, `It works: ${answer.models} models, ${fmt.ms(answer.latency_ms)}.`));
    }
  }, result));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(save, async () => {
      resetErrors();
      try {
        const created = await post("/api/providers", spec());
        toast(`Added ${created.name} (${created.prefix}).`);
        dlg.close();
        reload();
      } catch (err) {
        fieldErrors(err, fields);
        throw err;
      }
    }, result);
  });
}

function openEdit(conn, reload) {
  const name = field("Name", input({ name: "name", value: conn.name }));
  const prefix = field("Prefix", input({ name: "prefix", value: conn.prefix }));
  const baseUrl = field("Base URL", input({ name: "base_url", value: conn.settings.base_url || "" }), null, true);
  const apiKey = field("New API key", input({ type: "password", name: "api_key", autocomplete: "off",
    placeholder: conn.credentials.api_key ? `now ${conn.credentials.api_key}` : "" }), "Leave empty to keep the current one.", true);
  const priority = field("Priority", input({ type: "number", name: "priority", value: String(conn.priority), step: "1" }));
  const active = h("input", { type: "checkbox", name: "active", checked: conn.active, id: `active-${conn.id}` });
  const limits = limitInputs(conn.settings);
  const fields = { name, prefix, base_url: baseUrl, api_key: apiKey, priority, ...limits };
  const result = h("div");
  const save = h("button.button.primary", { type: "submit", form: "edit-provider" }, "Save");
  const form = h("form.form-grid", { id: "edit-provider", novalidate: true }, name.el, prefix.el, baseUrl.el,
    apiKey.el, priority.el, h("div.field", {}, h("span", {}, "Enabled"),
      h("label.check", { for: active.id }, active, "Serve requests with this account")),
    ...Object.values(limits).map((f) => f.el), h("div.wide", {}, result));
  const dlg = modal({ title: `Edit ${conn.name}`, content: [form], actions: [save] });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(save, async () => {
      Object.values(fields).forEach((f) => f.setError(null));
      const body = { name: name.input.value.trim(), prefix: prefix.input.value.trim(), active: active.checked,
        priority: numberOrNull(priority.input.value) ?? 0 };
      if (baseUrl.input.value.trim() && baseUrl.input.value.trim() !== conn.settings.base_url) body.base_url = baseUrl.input.value.trim();
      if (apiKey.input.value) body.api_key = apiKey.input.value;
      for (const [key] of LIMIT_FIELDS) body[key] = numberOrNull(limits[key].input.value);
      try {
        await put(`/api/providers/${encodeURIComponent(conn.id)}`, body);
      } catch (err) {
        fieldErrors(err, fields);
        throw err;
      }
      toast(`Saved ${body.name}.`);
      dlg.close();
      reload();
    }, result);
  });
}

// ------------------------------------------------------------------ subscription sign-in
// The shapes are those of omniroute/web/oauth.py: GET /api/oauth/services answers
// {services: [{name, title, flow, provider_type, import_source}]}; POST .../start answers
// {service, flow, state, expires_in, instructions} plus {user_code, verification_uri,
// verification_uri_complete, interval} (device) or {url} (paste), and {redirect_uri,
// listening, listen_error?} (loopback); POST .../poll answers {status: "pending",
// retry_in, interval, expires_in} until {status: "complete", created, connection};
// POST .../complete takes {state, code} and answers the same as a finished poll.
// Failures are the API's errors: 403 access_denied, 410 expired_token, 404
// unknown_sign_in, 400 invalid_grant / invalid_code / state_mismatch, 502 oauth_*.

/** Seconds until the next poll: what the API says, kept within reason. */
function pollDelay(seconds, fallback) {
  const s = typeof seconds === "number" && Number.isFinite(seconds) ? seconds : fallback;
  return Math.min(30, Math.max(0.25, s)) * 1000;
}

/**
 * Runs one sign-in in a dialog: the device code (polled until approved), or the URL
 * and a box for the pasted code (and, for a loopback flow, polled for the redirect).
 * `options`: {name, settings} for the account; `errorSlot` shows a refused start.
 */
async function signIn(service, options, reload, errorSlot, signal) {
  const base = `/api/oauth/${encodeURIComponent(service.name)}`;
  const body = {};
  if (options.name) body.name = options.name;
  if (options.settings && Object.keys(options.settings).length) body.settings = options.settings;
  let started;
  try {
    started = await post(`${base}/start`, body);
  } catch (err) {
    if (errorSlot) replace(errorSlot, errorBox({ message: `${service.title}: ${err.message}`, code: err.code }));
    else toast(`${service.title}: ${err.message}`, "bad");
    return;
  }
  if (errorSlot) clear(errorSlot);
  const state = started.state;
  const status = h("div.signin-status", { "aria-live": "polite" });
  const expiresAt = Date.now() + (started.expires_in || 600) * 1000;
  const countdown = h("span.muted.small");
  let stopped = false;
  let timer = null;
  const content = [];
  const stop = () => { stopped = true; clearTimeout(timer); };

  const done = (answer) => {
    stop();
    const conn = answer && answer.connection;
    toast(`${answer && answer.created === false ? "Signed in again" : "Signed in"} to ${service.title}${conn ? ` as ${conn.name}` : ""}.`);
    dlg.close();
    reload();
  };
  const failed = (err) => {
    stop();
    replace(status, errorBox(err), h("p", {}, h("button.button", { type: "button", onclick: () => {
      dlg.close();
      signIn(service, options, reload, errorSlot, signal);
    } }, "Start again")));
  };

  if (started.instructions) content.push(h("p.muted", {}, started.instructions));
  if (started.user_code) {
    const link = started.verification_uri_complete || started.verification_uri;
    content.push(
      h("p", {}, "1. Open ", h("a", { href: link, target: "_blank", rel: "noopener noreferrer", dataset: { verification: "" } },
        started.verification_uri), " and sign in."),
      h("p", {}, "2. Enter this code there:"),
      h("div.user-code", { dataset: { userCode: "" }, "aria-label": `Code ${started.user_code.split("").join(" ")}` }, started.user_code),
      h("p", {}, h("button.button.small", { type: "button", onclick: () => copy(started.user_code, "Code copied") }, "Copy code"),
        " ", countdown),
      h("p.muted.small", {}, "This dialog checks by itself and closes once you approved."));
    replace(status, h("p.small", {}, h("span.spinner", { "aria-hidden": "true" }), " Waiting for the approval…"));
  } else if (started.url) {
    content.push(h("p", {}, "1. ", h("a.button.primary", { href: started.url, target: "_blank", rel: "noopener noreferrer", dataset: { signinUrl: "" } },
      `Open the ${service.title} sign-in page`)),
      h("p.muted.small.break", {}, "Or copy this address into a browser: ", h("code", {}, started.url)));
    const code = field(started.flow === "loopback"
      ? "2. If the browser does not come back here by itself, paste the address it was sent to"
      : "2. Paste the code the page shows",
    input({ name: "code", autocomplete: "off", spellcheck: "false", placeholder: started.flow === "loopback" ? "the whole address, with ?code=…" : "CODE#STATE" }));
    const submit = h("button.button.primary", { type: "submit" }, "Finish sign-in");
    const form = h("form", { novalidate: true }, code.el, h("p", {}, submit, " ", countdown));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (stopped) return;
      const pasted = code.input.value.trim();
      if (!pasted) { code.setError("Paste the code first."); code.input.focus(); return; }
      code.setError(null);
      busy(submit, async () => {
        try {
          done(await post(`${base}/complete`, { state, code: pasted }));
        } catch (err) {
          // a refused code may be pasted again; a sign-in that is gone must start over
          if (err.status === 404 || err.status === 410) failed(err);
          else code.setError(err.code ? `${err.message} (${err.code})` : err.message);
        }
      }, status);
    });
    content.push(form);
    if (started.flow === "loopback" && started.listening) {
      content.push(h("p.muted.small", {}, "When the browser comes back to this machine, this dialog closes by itself."));
    }
    if (started.listen_error) content.push(h("p.muted.small", {}, started.listen_error));
  }
  content.push(status);
  const cancel = h("button.button", { type: "button", onclick: () => dlg.close() }, "Cancel");
  const dlg = modal({ title: `Sign in: ${service.title}`, content, actions: [cancel], onClose: stop });
  if (signal) signal.addEventListener("abort", () => dlg.close(), { once: true });

  const tick = () => {
    if (stopped) return;
    const left = Math.max(0, Math.round((expiresAt - Date.now()) / 1000));
    countdown.textContent = `expires in ${fmt.seconds(left)}`;
    if (!left) { failed({ message: "This sign-in expired.", code: "expired_token" }); return; }
    setTimeout(tick, 1000);
  };
  tick();

  const polls = Boolean(started.user_code) || (started.flow === "loopback" && started.listening);
  const interval = started.interval || 5;
  const poll = async () => {
    if (stopped) return;
    let answer;
    try {
      answer = await post(`${base}/poll`, { state });
    } catch (err) {
      if (!stopped) failed(err);
      return;
    }
    if (stopped) return;
    if (answer && answer.status === "pending") timer = setTimeout(poll, pollDelay(answer.retry_in, interval));
    else done(answer);
  };
  if (polls) timer = setTimeout(poll, pollDelay(started.user_code ? interval : 1, interval));
}

function signInCard(services, reload, signal) {
  const errorSlot = h("div", { "aria-live": "polite" });
  const name = field("Name for the account (optional)", input({ name: "account-name", placeholder: "default: who signs in" }),
    "Sign in more than once to use several accounts.");
  const buttons = services.map((service) => h("button.button", {
    type: "button", dataset: { service: service.name },
    onclick: () => signIn(service, { name: name.input.value.trim() }, reload, errorSlot, signal),
  }, `Sign in with ${service.title}`));
  const body = services.length
    ? [h("p.muted", {}, "Use a subscription you already pay for as an account. Sign-in opens the service's own page; the tokens are stored encrypted and renewed by themselves."),
      h("div.form-grid", {}, name.el), h("div.button-row", {}, buttons), errorSlot]
    : [h("p.muted", {}, "No subscription service is registered in this build (a plugin adds them).")];
  return h("section.card.section", { "aria-labelledby": "oauth-head" },
    h("div.card-head", {}, h("h2", { id: "oauth-head" }, "Subscriptions")), body);
}

// ------------------------------------------------------------------ the page

export default {
  title: "Providers",
  async mount(root, ctx) {
    const tests = new Map();
    const tableSlot = h("div");
    const oauthSlot = h("div");
    const errorSlot = h("div");
    let services = [];
    const addButton = h("button.button.primary", { type: "button", disabled: true }, "Add provider");
    replace(root, h("div.page-head", {}, h("h1", {}, "Providers and accounts"), h("div.actions", {}, addButton)),
      errorSlot, tableSlot, oauthSlot);
    let types = [];

    const load = async (polled = false) => {
      if (polled === true && tableSlot.contains(document.activeElement)) return; // keep focus
      const [providers, limits, resilience] = await Promise.all([
        get("/api/providers", { signal: ctx.signal }), get("/api/rate-limits", { signal: ctx.signal }),
        get("/api/resilience", { signal: ctx.signal })]);
      types = providers.types;
      addButton.disabled = false;
      clear(errorSlot);
      const live = new Map(limits.connections.map((c) => [c.id, c]));
      const breakers = new Map(resilience.breakers.map((b) => [b.key, b]));
      const rows = providers.providers.slice().sort((a, b) => a.prefix.localeCompare(b.prefix) || a.priority - b.priority);
      if (!rows.length) {
        replace(tableSlot, h("div.card", {}, emptyState("No provider accounts yet",
          "Add an API key for OpenAI, Anthropic, Gemini, Groq, OpenRouter, a local Ollama… or sign in with a subscription below.",
          h("button.button.primary", { type: "button", onclick: () => openAdd(types, load) }, "Add provider"))));
        return;
      }
      replace(tableSlot, table([
        { title: "Account", cell: (c) => h("div", {}, h("div.cell-main", {}, c.name),
          h("div.cell-sub", {}, h("code", {}, c.prefix), ` · ${c.type}`),
          c.oauth && c.oauth.account ? h("div.cell-sub", {}, c.oauth.account) : null,
          c.settings.base_url ? h("div.cell-sub.hide-narrow", {}, c.settings.base_url) : null) },
        { title: "State", cell: (c) => stateCell(c, live.get(c.id), tests.get(c.id)) },
        { title: "Breaker", cell: (c) => breakerCell(breakers.get(c.prefix)), hideNarrow: true },
        { title: "Quota", cell: (c) => quotaCell(live.get(c.id)), hideNarrow: true },
        { title: "Limits", cell: (c) => limitsCell(c, live.get(c.id)), hideNarrow: true },
        { title: "Priority", cell: (c) => String(c.priority), num: true, hideNarrow: true },
        { title: "", cell: (c) => rowActions(c) },
      ], rows, { caption: "Provider accounts" }));
    };

    function rowActions(conn) {
      const test = h("button.button.small", { type: "button" }, "Test");
      test.addEventListener("click", () => busy(test, async () => {
        test.textContent = "Testing…";
        const result = await post(`/api/providers/${encodeURIComponent(conn.id)}/test`, {});
        tests.set(conn.id, result);
        toast(result.ok ? `${conn.name}: ok, ${result.models} models, ${fmt.ms(result.latency_ms)}` : `${conn.name}: ${result.error}`,
          result.ok ? "" : "bad");
        await load();
      }));
      const toggle = h("button.button.small", { type: "button" }, conn.active ? "Disable" : "Enable");
      toggle.addEventListener("click", () => busy(toggle, async () => {
        await put(`/api/providers/${encodeURIComponent(conn.id)}`, { active: !conn.active });
        toast(`${conn.name} ${conn.active ? "disabled" : "enabled"}.`);
        await load();
      }));
      const edit = h("button.button.small", { type: "button", onclick: () => openEdit(conn, load) }, "Edit");
      const remove = h("button.button.small.danger", { type: "button" }, "Delete");
      remove.addEventListener("click", async () => {
        if (!(await confirmDialog(`Delete ${conn.name}?`, "Its credentials are deleted; requests stop using it at once.", "Delete"))) return;
        await busy(remove, async () => {
          await del(`/api/providers/${encodeURIComponent(conn.id)}`);
          toast(`Deleted ${conn.name}.`);
          await load();
        });
      });
      const buttons = [test, edit, toggle, remove];
      // the same account (its name), its settings kept (URL overrides, a project); when
      // several services make accounts of this type, one button each
      const matching = conn.oauth && conn.oauth.status === "needs_sign_in"
        ? services.filter((s) => s.provider_type === conn.type) : [];
      buttons.unshift(...matching.map((service) => h("button.button.small.primary", { type: "button",
        onclick: () => signIn(service, { name: conn.name, settings: conn.settings }, load, null, ctx.signal) },
      matching.length > 1 ? `Sign in again: ${service.title}` : "Sign in again")));
      return h("div.row-actions", {}, buttons);
    }

    addButton.addEventListener("click", () => openAdd(types, load));
    let list = null;
    try {
      list = await optional("/api/oauth/services", { signal: ctx.signal });
      services = list ? list.services : [];
      await load();
    } catch (err) {
      replace(errorSlot, errorBox(err));
    }
    replace(oauthSlot, list === null
      ? h("section.card.section", {}, unavailable("Subscription sign-in", "This gateway has no /api/oauth routes; add API-key accounts above."))
      : signInCard(services, load, ctx.signal));
    ctx.poll(() => load(true), EVERY_MS);
  },
};
