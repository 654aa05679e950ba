// Small DOM helpers. Text always goes in as text nodes (never innerHTML), so nothing
// the gateway stores (model names, error messages, request bodies) can run as markup.

const SVG_NS = "http://www.w3.org/2000/svg";

/**
 * h("button.primary", {onclick, type: "button"}, "Save"): an element with classes from
 * the tag, attributes (on* become listeners, `dataset`, booleans), and children (strings
 * become text; null/false are skipped; arrays are flattened).
 */
export function h(tag, attrs = {}, ...children) {
  const [name, ...classes] = tag.split(".");
  const el = document.createElement(name || "div");
  if (classes.length) el.className = classes.join(" ");
  applyAttrs(el, attrs);
  append(el, children);
  return el;
}

/** The same for SVG elements (no class shorthand). */
export function s(name, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function applyAttrs(el, attrs) {
  if (!attrs || typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs)) {
    if (attrs !== null && attrs !== undefined) append(el, [attrs]);
    return;
  }
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "class") {
      el.className = [el.className, value].filter(Boolean).join(" ");
    } else if (key === "value" && "value" in el) {
      el.value = value;
    } else if (key === "checked" || key === "disabled" || key === "selected" || key === "hidden"
               || key === "required" || key === "multiple" || key === "readOnly") {
      el[key] = Boolean(value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function replace(el, ...children) {
  clear(el);
  return append(el, children);
}

// ------------------------------------------------------------------ toasts

export function toast(message, kind = "") {
  const box = document.getElementById("toasts");
  if (!box) return;
  const item = h(`div.toast${kind ? "." + kind : ""}`, {}, message);
  box.append(item);
  setTimeout(() => item.remove(), kind === "bad" ? 7000 : 3500);
}

// ------------------------------------------------------------------ errors and states

/** An API error as the API said it (message, and its code when there is one). */
export function errorBox(err) {
  const message = err && err.message ? err.message : String(err);
  return h("div.error-box", { role: "alert" }, message,
    err && err.code ? h("div.code", {}, err.code) : null);
}

export function emptyState(title, text, ...actions) {
  return h("div.empty-state", {}, h("h2", {}, title), text ? h("p", {}, text) : null,
    actions.length ? h("div.actions", {}, actions) : null);
}

/** A "not available in this build" note, for an API route that does not exist here. */
export function unavailable(what, detail) {
  return h("div.note.unavailable", { role: "note", dataset: { unavailable: "" } },
    h("strong", {}, `${what} is not available in this build.`), " ", detail || "");
}

export function badge(text, kind = "") {
  return h(`span.badge${kind ? "." + kind : ""}`, {}, text);
}

// ------------------------------------------------------------------ dialogs

/**
 * Opens a modal <dialog> (focus is trapped and Esc closes it, natively). Returns
 * {dialog, body, foot, close}. `onClose` runs once however it closes.
 */
export function modal({ title, content = [], actions = [], onClose = null, wide = false }) {
  const body = h("div.dialog-body", {}, content);
  const foot = h("div.dialog-foot", {}, actions);
  const titleId = `dlg-${Math.random().toString(36).slice(2)}`;
  const dialog = h("dialog", { "aria-labelledby": titleId, class: wide ? "wide" : "" },
    h("div.dialog-head", {}, h("h2", { id: titleId }, title),
      h("button.icon-button", { type: "button", "aria-label": "Close", onclick: () => close() },
        s("svg", { viewBox: "0 0 24 24", "aria-hidden": "true" }, s("path", { d: "M6 6l12 12M18 6 6 18" })))),
    body, foot);
  let closed = false;
  function close() {
    if (closed) return;
    closed = true;
    if (dialog.open) dialog.close();
    dialog.remove();
    if (onClose) onClose();
  }
  dialog.addEventListener("close", close);
  document.body.append(dialog);
  dialog.showModal();
  const first = dialog.querySelector("input:not([type=hidden]), select, textarea");
  if (first) first.focus();
  return { dialog, body, foot, close };
}

/** Asks a yes/no question; resolves true when confirmed. */
export function confirmDialog(title, text, confirmLabel = "Confirm", danger = true) {
  return new Promise((resolve) => {
    let answer = false;
    const yes = h(`button.button.${danger ? "danger" : "primary"}`, { type: "button" }, confirmLabel);
    const no = h("button.button", { type: "button" }, "Cancel");
    const dlg = modal({ title, content: [h("p", {}, text)], actions: [no, yes],
      onClose: () => resolve(answer) });
    yes.addEventListener("click", () => { answer = true; dlg.close(); });
    no.addEventListener("click", () => dlg.close());
    yes.focus();
  });
}

// ------------------------------------------------------------------ forms

/** A labelled field: {label, input, hint}; returns {el, input, setError}. */
export function field(label, input, hint = null, wide = false) {
  const id = input.id || `f-${Math.random().toString(36).slice(2)}`;
  input.id = id;
  const error = h("div.field-error", { role: "alert", hidden: true });
  const hintEl = hint ? h("div.hint", { id: `${id}-hint` }, hint) : null;
  if (hintEl) input.setAttribute("aria-describedby", hintEl.id);
  const el = h(`div.field${wide ? ".wide" : ""}`, {}, h("label", { for: id }, label), input, hintEl, error);
  return {
    el, input,
    setError(message) {
      error.textContent = message || "";
      error.hidden = !message;
      if (message) input.setAttribute("aria-invalid", "true");
      else input.removeAttribute("aria-invalid");
    },
  };
}

export function input(attrs = {}) { return h("input", { type: "text", autocomplete: "off", ...attrs }); }

export function select(options, value = null, attrs = {}) {
  const el = h("select", attrs);
  for (const option of options) {
    const [val, label] = Array.isArray(option) ? option : [option, option];
    el.append(h("option", { value: val, selected: String(val) === String(value) }, label));
  }
  if (value !== null && value !== undefined) el.value = String(value);
  return el;
}

/** Segmented control: returns the element; onChange(value) on a press. */
export function segmented(options, value, onChange, label) {
  const group = h("div.segmented", { role: "group", "aria-label": label });
  for (const [val, text] of options) {
    const button = h("button", { type: "button", "aria-pressed": String(val === value), dataset: { value: val } }, text);
    button.addEventListener("click", () => {
      group.querySelectorAll("button").forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
      onChange(val);
    });
    group.append(button);
  }
  return group;
}

/** Runs an async action with the button disabled; shows failures in `errorSlot`. */
export async function busy(button, action, errorSlot = null) {
  const label = button.textContent;
  button.disabled = true;
  if (errorSlot) clear(errorSlot);
  try {
    return await action();
  } catch (err) {
    if (errorSlot) errorSlot.append(errorBox(err));
    else toast(err.message || String(err), "bad");
    return undefined;
  } finally {
    button.disabled = false;
    button.textContent = label;
  }
}

// ------------------------------------------------------------------ tables

/**
 * A table: columns [{title, cell(row) -> Node|string, num?, hideNarrow?}], rows, and
 * options {empty, onRow(row)}: a clickable row is focusable and opens with Enter.
 */
export function table(columns, rows, { empty = "Nothing here yet.", onRow = null, caption = null } = {}) {
  const head = h("tr", {}, columns.map((c) => h("th", {
    scope: "col", class: [c.num ? "num" : "", c.hideNarrow ? "hide-narrow" : ""].join(" ").trim() || null,
  }, c.title)));
  const body = h("tbody");
  if (!rows.length) {
    body.append(h("tr", {}, h("td.empty", { colspan: columns.length }, empty)));
  }
  for (const row of rows) {
    const tr = h("tr", {}, columns.map((c) => h("td", {
      class: [c.num ? "num" : "", c.hideNarrow ? "hide-narrow" : ""].join(" ").trim() || null,
    }, c.cell(row))));
    if (onRow) {
      tr.classList.add("clickable");
      tr.tabIndex = 0;
      tr.addEventListener("click", (event) => {
        if (event.target.closest("button, a, input, select")) return;
        onRow(row);
      });
      tr.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && event.target === tr) onRow(row);
      });
    }
    body.append(tr);
  }
  return h("div.table-wrap", {}, h("table", {}, caption ? h("caption.sr-only", {}, caption) : null,
    h("thead", {}, head), body));
}

/** Copies text to the clipboard; says so in a toast. */
export async function copy(text, what = "Copied") {
  try {
    await navigator.clipboard.writeText(text);
    toast(`${what} to the clipboard.`);
  } catch (err) {
    toast("The browser refused the clipboard: select the text and copy it.", "bad");
  }
}

/** Saves `text` as a file the browser downloads (made here: nothing is fetched). */
export function download(filename, text, type = "text/csv") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = h("a", { href: url, download: filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** Rows of values as CSV (RFC 4180 quoting). */
export function csv(header, rows) {
  const cell = (v) => {
    const text = v === null || v === undefined ? "" : String(v);
    return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  };
  return [header, ...rows].map((r) => r.map(cell).join(",")).join("\r\n") + "\r\n";
}
