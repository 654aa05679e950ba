// Overview: health, requests per minute, errors, spend today, top models, streams in
// flight; one call (GET /api/dashboard/overview) every 5 seconds.

import { get, query } from "../api.js";
import { h, replace, errorBox, badge, emptyState } from "../dom.js";
import * as fmt from "../format.js";
import { timeChart, hbars, sparkline } from "../chart.js";

const EVERY_MS = 5000;

function kpi(label, value, sub = null, cls = "", extra = null) {
  return h("div.kpi", { role: "group", "aria-label": label },
    h("div.label", {}, label), h(`div.value${cls ? "." + cls : ""}`, {}, value),
    sub ? h("div.sub", {}, sub) : null, extra);
}

/** The last hour as 60 one-minute buckets (minutes without requests are zeros). */
function minuteBuckets(minutes, now) {
  const last = Math.floor(now / 60) * 60;
  const byTs = new Map(minutes.map((m) => [m.ts, m]));
  const buckets = [], ok = [], failed = [];
  for (let ts = last - 59 * 60; ts <= last; ts += 60) {
    const m = byTs.get(ts);
    buckets.push(ts);
    ok.push(m ? m.requests - m.errors : 0);
    failed.push(m ? m.errors : 0);
  }
  return { buckets, ok, failed };
}

function render(root, data, ctx) {
  const health = data.health;
  const perMinute = minuteBuckets(data.minutes, data.now);
  const thisMinute = perMinute.ok[59] + perMinute.failed[59];
  const prevMinute = perMinute.ok[58] + perMinute.failed[58];
  const hour = data.last_hour;
  const today = data.today;
  const statusCls = health.status === "ok" ? "ok" : "warn";
  const accounts = health.accounts;
  const notices = [];
  if (health.needs_sign_in.length) {
    notices.push(h("div.note.warn", { role: "alert" },
      h("strong", {}, "Needs sign-in: "),
      health.needs_sign_in.map((a) => a.name).join(", "),
      " — these subscription accounts are out of service until signed in again. ",
      h("a", { href: "/dashboard/providers", onclick: (e) => { e.preventDefault(); ctx.navigate("providers"); } },
        "Open Providers")));
  }
  for (const bad of health.providers.unusable) {
    notices.push(h("div.note.bad", {}, h("strong", {}, `Connection ${bad.id} cannot be used: `), bad.error));
  }
  if (health.request_log.dropped) {
    notices.push(h("div.note.warn", {}, `${fmt.int(health.request_log.dropped)} usage records were dropped (the database fell behind).`));
  }
  const kpis = h("div.kpis", {},
    kpi("Status", health.status === "ok" ? "Healthy" : "Degraded",
      `up ${fmt.seconds(health.uptime_s)} · v${health.version}`, statusCls),
    kpi("Requests / min", fmt.int(thisMinute), `${fmt.int(prevMinute)} the minute before · ${fmt.int(hour.requests)} this hour`,
      "", sparkline(perMinute.ok.map((v, i) => v + perMinute.failed[i]))),
    kpi("Errors (1 h)", fmt.int(hour.errors), `${fmt.percent(hour.errors, hour.requests)} of requests`,
      hour.errors ? "bad" : ""),
    kpi("Spend today", fmt.usd(today.cost_usd),
      today.saved_usd ? `saved ${fmt.usd(today.saved_usd)} (cache ${fmt.usd(today.saved_by_cache_usd)})` : `${fmt.int(today.requests)} requests`),
    kpi("Streams in flight", data.streams_in_flight === null ? "—" : fmt.int(data.streams_in_flight),
      `${fmt.int(data.requests_in_flight)} requests in flight`),
    kpi("Accounts", `${accounts.healthy} / ${accounts.healthy + accounts.degraded + accounts.down}`,
      `healthy · ${accounts.degraded} degraded · ${accounts.down} down`, accounts.down ? "warn" : ""));

  const chartCard = h("section.card", { "aria-labelledby": "ov-rpm" },
    h("div.card-head", {}, h("h2", { id: "ov-rpm" }, "Requests per minute"),
      h("span.muted.small", {}, "last 60 minutes")),
    timeChart({
      buckets: perMinute.buckets, kind: "bars", step: 60, height: 200,
      label: "Requests per minute over the last hour",
      series: [{ label: "succeeded", values: perMinute.ok, cls: "s0" },
               { label: "failed", values: perMinute.failed, cls: "sbad" }],
      format: (v) => fmt.compact(v),
    }));

  const models = data.top_models.slice().sort((a, b) => b.requests - a.requests);
  const modelsCard = h("section.card", { "aria-labelledby": "ov-models" },
    h("div.card-head", {}, h("h2", { id: "ov-models" }, "Top models today"),
      h("span.muted.small", {}, `${fmt.int(today.requests)} requests`)),
    models.length ? hbars(models.map((m) => ({
      label: m.model || "(none)", value: m.requests,
      text: `${fmt.int(m.requests)} · ${fmt.usd(m.cost_usd)}`,
    }))) : emptyState("No requests today", "Requests through the gateway appear here."));

  const errors = data.recent_errors;
  const errorsCard = h("section.card", { "aria-labelledby": "ov-errors" },
    h("div.card-head", {}, h("h2", { id: "ov-errors" }, "Recent failures"),
      h("a.small", { href: "/dashboard/requests?status=error",
        onclick: (e) => { e.preventDefault(); ctx.navigate("requests", { status: "error" }); } }, "All failures")),
    errors.length ? h("ul.attempts", {}, errors.map((e) => h("li", {},
      badge(String(e.status), e.status >= 500 ? "bad" : "warn"),
      h("div", {}, h("div.cell-main", {}, e.model_requested || e.endpoint),
        h("div.cell-sub.clamp", { title: e.error || "" }, e.error || e.error_class || "")),
      h("span.small.muted.nowrap", {}, fmt.relative(e.ts, data.now)))))
      : h("p.muted", {}, "No failed requests in the last 24 hours."));

  replace(root,
    h("div.page-head", {}, h("h1", {}, "Overview"),
      h("span.muted.small", { "aria-live": "off" }, `updated ${fmt.time(data.now)}`)),
    notices, kpis, chartCard,
    h("div.grid.two.section", {}, modelsCard, errorsCard));
}

export default {
  title: "Overview",
  async mount(root, ctx) {
    const load = async (polled = false) => {
      const data = await get(`/api/dashboard/overview${query({ today: fmt.startOfToday() })}`, { signal: ctx.signal });
      // a chart being read (pointer or keyboard) is left alone until the next poll
      if (polled && root.querySelector(".chart:hover, .chart:focus")) return;
      render(root, data, ctx);
    };
    try {
      await load();
    } catch (err) {
      replace(root, h("div.page-head", {}, h("h1", {}, "Overview")), errorBox(err));
    }
    ctx.poll(() => load(true), EVERY_MS);
  },
};
