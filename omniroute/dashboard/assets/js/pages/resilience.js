// Resilience: each account's cooldown and failures, each provider's circuit breaker,
// the sticky sessions, and reset (all, or one account).

import { get, post } from "../api.js";
import { h, replace, errorBox, table, badge, busy, toast, confirmDialog } from "../dom.js";
import * as fmt from "../format.js";

const EVERY_MS = 5000;

function kpi(label, value, sub, cls = "") {
  return h("div.kpi", { role: "group", "aria-label": label }, h("div.label", {}, label),
    h(`div.value${cls ? "." + cls : ""}`, {}, value), sub ? h("div.sub", {}, sub) : null);
}

export default {
  title: "Resilience",
  async mount(root, ctx) {
    const slot = h("div");
    const resetAll = h("button.button.danger", { type: "button" }, "Reset everything");
    replace(root, h("div.page-head", {}, h("h1", {}, "Resilience"), h("div.actions", {}, resetAll)),
      h("p.muted", {}, "When an account fails it rests (cooldown); when a provider keeps failing its breaker opens. Reset puts them back in service at once — including accounts out for good (a revoked key, no credit)."),
      slot);

    async function reset(connectionId, button) {
      await busy(button, async () => {
        await post("/api/resilience/reset", connectionId ? { connection_id: connectionId } : {});
        toast(connectionId ? "Account reset." : "Every cooldown and breaker was reset.");
        await load();
      });
    }

    async function load(polled = false) {
      if (polled && slot.contains(document.activeElement)) return;
      const [state, limits, sessions] = await Promise.all([get("/api/resilience", { signal: ctx.signal }),
        get("/api/rate-limits", { signal: ctx.signal }), get("/api/sessions", { signal: ctx.signal })]);
      const health = state.health;
      const names = new Map(limits.connections.map((c) => [c.id, c.name]));
      replace(slot,
        h("div.kpis", {},
          kpi("Healthy accounts", fmt.int(health.healthy), `${health.degraded} degraded`, health.healthy ? "ok" : ""),
          kpi("Down", fmt.int(health.down), "cooling, out of service or behind an open breaker", health.down ? "bad" : ""),
          kpi("Breakers open", fmt.int(health.breakers.open), `${health.breakers.half_open} half-open · ${health.breakers.closed} closed`,
            health.breakers.open ? "bad" : ""),
          kpi("Sticky sessions", fmt.int(sessions.count), `at most ${fmt.int(sessions.max)} · ${fmt.seconds(sessions.ttl)} each`)),
        h("section.section", {}, h("h2", {}, "Accounts"), table([
          { title: "Account", cell: (c) => h("div", {}, h("div.cell-main", {}, c.name), h("div.cell-sub", {}, h("code", {}, c.prefix), ` · ${c.type}`)) },
          { title: "State", cell: (c) => h("div", {}, badge(c.status, c.status === "healthy" ? "ok" : c.status === "down" ? "bad" : "warn"),
            c.terminal_reason ? h("div.cell-sub", {}, `out of service: ${c.terminal_reason}`) : null,
            c.cooling_until ? h("div.cell-sub", {}, `cooling until ${fmt.time(c.cooling_until)} (${fmt.seconds(c.cooldown_left)})`) : null) },
          { title: "Failures", cell: (c) => h("div", {}, `${fmt.int(c.consecutive_failures)} in a row`,
            h("div.cell-sub", {}, `${fmt.percent(c.failures, c.total_requests)} of ${fmt.int(c.total_requests)}`)), hideNarrow: true },
          { title: "Last error", cell: (c) => c.last_error ? h("div.small", {}, c.last_error,
            h("div.cell-sub", {}, fmt.relative(c.last_error_at))) : h("span.muted", {}, "—"), hideNarrow: true },
          { title: "In flight", cell: (c) => fmt.int(c.in_flight), num: true, hideNarrow: true },
          { title: "", cell: (c) => {
            const button = h("button.button.small", { type: "button", disabled: c.status === "healthy" && !c.consecutive_failures }, "Reset");
            button.addEventListener("click", () => reset(c.id, button));
            return button;
          } },
        ], limits.connections, { empty: "No accounts yet.", caption: "Accounts" })),
        h("section.section", {}, h("h2", {}, "Circuit breakers"), table([
          { title: "Provider", cell: (b) => h("code", {}, b.key) },
          { title: "State", cell: (b) => badge(b.state.replace("_", "-"), b.state === "closed" ? "ok" : b.state === "open" ? "bad" : "warn") },
          { title: "Failures", cell: (b) => `${b.consecutive_failures} / ${b.threshold}`, num: true },
          { title: "Trial in", cell: (b) => b.state === "closed" ? "—" : fmt.seconds(b.retry_in), hideNarrow: true },
          { title: "Opened", cell: (b) => `${fmt.int(b.times_opened)} times`, num: true, hideNarrow: true },
        ], state.breakers, { empty: "No breaker yet: one appears with a provider's first request.", caption: "Breakers" })),
        h("section.section", {}, h("h2", {}, "Sticky sessions"), table([
          { title: "Session", cell: (s) => h("code", {}, s.session.length > 24 ? `${s.session.slice(0, 24)}…` : s.session) },
          { title: "Account", cell: (s) => names.get(s.connection_id) || s.connection_id },
          { title: "Expires", cell: (s) => `in ${fmt.seconds(s.expires_in)}`, hideNarrow: true },
        ], sessions.items, { empty: "No sticky sessions.", caption: "Sessions" })));
    }

    resetAll.addEventListener("click", async () => {
      if (!(await confirmDialog("Reset every account and breaker?", "Cooldowns end, breakers close and accounts out of service come back (a revoked key will fail again).", "Reset"))) return;
      await reset(null, resetAll);
    });
    try {
      await load();
    } catch (err) {
      replace(slot, errorBox(err));
    }
    ctx.poll(() => load(true), EVERY_MS);
  },
};
