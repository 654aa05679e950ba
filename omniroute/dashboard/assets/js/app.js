// The dashboard's shell: sign-in, the navigation, the theme, and one page at a time.
//
// A page is a module under pages/ whose default export is
//   { title, async mount(root, ctx) }  ->  optionally returns a function run on leaving.
// ctx gives the page what it needs: ctx.poll(fn, ms) (stopped when the page is left or
// hidden), ctx.navigate(view, params), ctx.params (the query string), ctx.signal (aborted
// on leaving). To add a page (images and audio, say), add one line to PAGES and a module.

import { get, post, setCsrf, onUnauthorized, ApiError } from "./api.js";
import { h, s, clear, replace, errorBox, field, input } from "./dom.js";

const PAGES = [
  { view: "overview", title: "Overview", icon: "M3 13h8V3H3zM13 21h8V11h-8zM3 21h8v-6H3zM13 3v6h8V3z" },
  { view: "providers", title: "Providers", icon: "M4 7h16M4 12h16M4 17h10M18 15l3 2-3 2" },
  { view: "keys", title: "API keys", icon: "M15 7a4 4 0 1 1-3.9 5H3v3h3v3h3v-3h2.1A4 4 0 0 1 15 7z" },
  { view: "models", title: "Models", icon: "M12 3 3 8l9 5 9-5zM3 13l9 5 9-5M3 18l9 5 9-5" },
  { view: "usage", title: "Usage and cost", icon: "M4 20V10M10 20V4M16 20v-7M22 20H2" },
  { view: "requests", title: "Request log", icon: "M4 5h16M4 10h16M4 15h10M4 20h7" },
  { view: "cache", title: "Cache", icon: "M4 6c0-1.7 3.6-3 8-3s8 1.3 8 3-3.6 3-8 3-8-1.3-8-3zM4 6v12c0 1.7 3.6 3 8 3s8-1.3 8-3V6M4 12c0 1.7 3.6 3 8 3s8-1.3 8-3" },
  { view: "resilience", title: "Resilience", icon: "M12 3 4 6v6c0 4.4 3.4 8.3 8 9 4.6-.7 8-4.6 8-9V6z" },
  { view: "settings", title: "Settings", icon: "M12 15a3 3 0 1 0 0-6 3 3 0 0 0 0 6zM19.4 15a1.7 1.7 0 0 0 .3 1.8l.1.1a2 2 0 1 1-2.8 2.8l-.1-.1a1.7 1.7 0 0 0-1.8-.3 1.7 1.7 0 0 0-1 1.5V21a2 2 0 1 1-4 0v-.1a1.7 1.7 0 0 0-1.1-1.5 1.7 1.7 0 0 0-1.8.3l-.1.1a2 2 0 1 1-2.8-2.8l.1-.1a1.7 1.7 0 0 0 .3-1.8 1.7 1.7 0 0 0-1.5-1H3a2 2 0 1 1 0-4h.1a1.7 1.7 0 0 0 1.5-1.1 1.7 1.7 0 0 0-.3-1.8l-.1-.1a2 2 0 1 1 2.8-2.8l.1.1a1.7 1.7 0 0 0 1.8.3H9a1.7 1.7 0 0 0 1-1.5V3a2 2 0 1 1 4 0v.1a1.7 1.7 0 0 0 1 1.5 1.7 1.7 0 0 0 1.8-.3l.1-.1a2 2 0 1 1 2.8 2.8l-.1.1a1.7 1.7 0 0 0-.3 1.8V9a1.7 1.7 0 0 0 1.5 1H21a2 2 0 1 1 0 4h-.1a1.7 1.7 0 0 0-1.5 1z" },
  { view: "cli-tools", title: "CLI tools", icon: "M4 17l6-5-6-5M12 19h8" },
];
const BASE = "/dashboard";
const THEMES = ["system", "light", "dark"];

const app = document.getElementById("app");
const main = document.getElementById("main");
const nav = document.getElementById("nav");
let current = null; // {leave, view}
let session = null;
let healthTimer = null;

// ------------------------------------------------------------------ theme

function applyTheme(theme) {
  if (theme === "system") document.documentElement.removeAttribute("data-theme");
  else document.documentElement.setAttribute("data-theme", theme);
  const button = document.getElementById("theme-toggle");
  button.setAttribute("aria-label", `Theme: ${theme} (change)`);
  button.title = `Theme: ${theme}`;
}

function currentTheme() {
  try { return localStorage.getItem("omniroute.theme") || "system"; } catch (e) { return "system"; }
}

document.getElementById("theme-toggle").addEventListener("click", () => {
  const next = THEMES[(THEMES.indexOf(currentTheme()) + 1) % THEMES.length];
  try { localStorage.setItem("omniroute.theme", next); } catch (e) { /* private mode: this page only */ }
  applyTheme(next);
});
applyTheme(currentTheme());

// ------------------------------------------------------------------ navigation

function buildNav() {
  clear(nav);
  for (const page of PAGES) {
    const link = h("a", { href: `${BASE}/${page.view}`, dataset: { view: page.view } },
      s("svg", { viewBox: "0 0 24 24", "aria-hidden": "true" }, s("path", { d: page.icon })), page.title);
    link.addEventListener("click", (event) => {
      if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
      event.preventDefault();
      navigate(page.view);
    });
    nav.append(link);
  }
}

function viewFromPath() {
  const rest = location.pathname.slice(BASE.length).replace(/^\/+|\/+$/g, "");
  return rest || "overview";
}

export function navigate(view, params = null, replaceState = false) {
  const url = `${BASE}/${view}${params ? "?" + new URLSearchParams(params) : ""}`;
  if (replaceState) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  closeNav();
  show(view);
}

window.addEventListener("popstate", () => { if (session) show(viewFromPath()); });

const navToggle = document.getElementById("nav-toggle");
function closeNav() {
  app.dataset.nav = "";
  navToggle.setAttribute("aria-expanded", "false");
}
navToggle.addEventListener("click", () => {
  const open = app.dataset.nav !== "open";
  app.dataset.nav = open ? "open" : "";
  navToggle.setAttribute("aria-expanded", String(open));
  if (open) nav.querySelector("a")?.focus();
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && app.dataset.nav === "open") { closeNav(); navToggle.focus(); }
});
document.querySelector(".brand").addEventListener("click", (event) => {
  event.preventDefault();
  if (session) navigate("overview");
});

// ------------------------------------------------------------------ pages

async function show(view) {
  const page = PAGES.find((p) => p.view === view);
  if (current && current.leave) {
    try { current.leave(); } catch (err) { console.error(err); }
  }
  current = null;
  nav.querySelectorAll("a").forEach((a) => {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  if (!page) {
    replace(main, h("div.empty-state", {}, h("h1", {}, "Page not found"),
      h("p", {}, "There is no dashboard page here. "), h("a", { href: `${BASE}/overview` }, "Go to the overview")));
    document.title = "Not found · omniroute";
    return;
  }
  document.title = `${page.title} · omniroute`;
  const controller = new AbortController();
  const timers = new Set();
  const ctx = {
    view, signal: controller.signal, navigate,
    params: new URLSearchParams(location.search),
    poll(fn, everyMs) {
      let stopped = false, timer = null;
      const tick = async () => {
        if (stopped) return;
        if (!document.hidden) {
          try { await fn(); } catch (err) { if (!(err instanceof DOMException)) console.error(err); }
        }
        if (!stopped) timer = setTimeout(tick, everyMs);
      };
      timer = setTimeout(tick, everyMs);
      const stop = () => { stopped = true; clearTimeout(timer); };
      timers.add(stop);
      return stop;
    },
  };
  const entry = { view, leave: null };
  current = entry;
  const root = h("div.page", { dataset: { page: view } });
  replace(main, root);
  try {
    const module = await import(`./pages/${view}.js`);
    if (current !== entry) return;
    const leave = await module.default.mount(root, ctx);
    entry.leave = () => {
      controller.abort();
      timers.forEach((stop) => stop());
      if (typeof leave === "function") leave();
    };
    if (current !== entry) entry.leave();
  } catch (err) {
    if (current === entry) root.append(errorBox(err));
    entry.leave = () => { controller.abort(); timers.forEach((stop) => stop()); };
  }
}

// ------------------------------------------------------------------ sign-in

function showLogin(state, message = null) {
  session = null;
  if (current && current.leave) current.leave();
  current = null;
  app.dataset.state = "login";
  document.getElementById("logout").hidden = true;
  document.title = "Sign in · omniroute";
  const password = field("Admin password", input({ type: "password", name: "password", autocomplete: "current-password", required: true }),
    "Printed once when the gateway first started; change it with omniroute admin password.");
  const errorSlot = h("div");
  if (message) errorSlot.append(errorBox({ message }));
  const submit = h("button.button.primary", { type: "submit" }, "Sign in");
  const form = h("form", { novalidate: true }, password.el, errorSlot, submit);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(errorSlot);
    if (!password.input.value) {
      password.setError("Enter the admin password.");
      password.input.focus();
      return;
    }
    password.setError(null);
    submit.disabled = true;
    try {
      const answer = await post("/api/auth/login", { password: password.input.value }, { quiet401: true });
      setCsrf(answer.csrf_token);
      await start(true);
    } catch (err) {
      errorSlot.append(errorBox(err));
      password.input.select();
    } finally {
      submit.disabled = false;
    }
  });
  replace(main, h("div.login", {}, h("div.card", {},
    h("h1", {}, "Sign in to omniroute"),
    h("p.muted", {}, state && state.require_login === false
      ? "Sign-in without a password is for browsers on this machine only."
      : "The dashboard manages this gateway: its accounts, keys and settings."),
    form)));
  password.input.focus();
}

async function signOut() {
  try { await post("/api/auth/logout", {}); } catch (err) { /* the session is gone either way */ }
  setCsrf(null);
  showLogin(await get("/api/auth/session").catch(() => null));
}
document.getElementById("logout").addEventListener("click", signOut);

onUnauthorized(async () => {
  if (!session) return;
  const state = await get("/api/auth/session").catch(() => null);
  showLogin(state, "Your session ended; sign in again.");
});

async function refreshHealth() {
  const dot = document.getElementById("health-dot");
  try {
    const health = await get("/api/monitoring/health");
    dot.className = `health-dot ${health.status}`;
    dot.title = `Gateway ${health.status}`;
    dot.setAttribute("aria-label", `Gateway ${health.status}`);
    document.getElementById("version").textContent = `v${health.version}`;
  } catch (err) {
    dot.className = "health-dot down";
    dot.title = dot.ariaLabel = "Gateway unreachable";
  }
}

async function start(afterLogin = false) {
  let state;
  try {
    state = await get("/api/auth/session", { quiet401: true });
  } catch (err) {
    replace(main, errorBox(err));
    return;
  }
  if (!state.authenticated && state.password_free) {
    const answer = await post("/api/auth/login", {}, { quiet401: true });
    setCsrf(answer.csrf_token);
    state = await get("/api/auth/session");
  }
  if (!state.authenticated) {
    showLogin(state);
    return;
  }
  setCsrf(state.csrf_token);
  session = state;
  app.dataset.state = "ready";
  document.getElementById("logout").hidden = state.password_free && !state.require_login;
  buildNav();
  refreshHealth();
  if (healthTimer === null) healthTimer = setInterval(refreshHealth, 15000);
  const view = viewFromPath();
  if (afterLogin) history.replaceState(null, "", location.pathname + location.search);
  show(view);
  main.focus({ preventScroll: true });
}

start().catch((err) => replace(main, errorBox(err instanceof ApiError ? err : { message: String(err) })));
