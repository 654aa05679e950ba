// Numbers, money, durations and times as people read them (the viewer's locale and zone).

const locale = undefined; // the browser's

export function int(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  return Math.round(n).toLocaleString(locale);
}

export function compact(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  const abs = Math.abs(n);
  if (abs < 1000) return Number.isInteger(n) ? String(n) : n.toFixed(abs < 10 ? 2 : 1);
  const units = [["T", 1e12], ["B", 1e9], ["M", 1e6], ["k", 1e3]];
  for (const [unit, size] of units) {
    if (abs >= size) return `${(n / size).toFixed(abs / size < 10 ? 1 : 0)}${unit}`;
  }
  return String(n);
}

export function usd(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  const abs = Math.abs(n);
  if (abs === 0) return "$0";
  if (abs < 0.01) return `$${n.toPrecision(2)}`;
  if (abs < 100) return `$${n.toFixed(2)}`;
  return `$${Math.round(n).toLocaleString(locale)}`;
}

export function ms(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  if (n < 1000) return `${Math.round(n)} ms`;
  return `${(n / 1000).toFixed(n < 10000 ? 2 : 1)} s`;
}

export function seconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "—";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

export function percent(part, whole) {
  if (!whole) return "—";
  const p = (100 * part) / whole;
  return `${p < 10 ? p.toFixed(1) : Math.round(p)}%`;
}

/** Epoch seconds as a local date and time. */
export function dateTime(ts) {
  if (!ts) return "—";
  return new Date(ts * 1000).toLocaleString(locale, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
  });
}

export function time(ts) {
  if (!ts) return "—";
  return new Date(ts * 1000).toLocaleTimeString(locale, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** A short label for a chart axis: the time within two days, the date and hour for hourly
 * points over more, else the date. */
export function axisTime(ts, span, step = 3600) {
  const d = new Date(ts * 1000);
  if (span <= 2 * 86400) return d.toLocaleTimeString(locale, { hour: "2-digit", minute: "2-digit" });
  if (step < 86400) return d.toLocaleString(locale, { month: "short", day: "numeric", hour: "2-digit" });
  return d.toLocaleDateString(locale, { month: "short", day: "numeric" });
}

/** "3 min ago", "in 2 h" (epoch seconds against now). */
export function relative(ts, now = Date.now() / 1000) {
  if (!ts) return "—";
  const diff = ts - now;
  const abs = Math.abs(diff);
  let text;
  if (abs < 45) text = `${Math.round(abs)} s`;
  else if (abs < 3600) text = `${Math.round(abs / 60)} min`;
  else if (abs < 86400 * 2) text = `${Math.round(abs / 3600)} h`;
  else text = `${Math.round(abs / 86400)} days`;
  return diff < 0 ? `${text} ago` : `in ${text}`;
}

/** Midnight of the viewer's current day, as epoch seconds. */
export function startOfToday() {
  const d = new Date();
  d.setHours(0, 0, 0, 0);
  return Math.floor(d.getTime() / 1000);
}
