// The management API, as the dashboard calls it: same origin, the session cookie, and
// the session's CSRF token on every request that changes state. Errors arrive as
// ApiError with the API's own message, code and param, so a page shows them as sent.

const TIMEOUT_MS = 20000;
let csrfToken = null;
const listeners = new Set();

export class ApiError extends Error {
  constructor(status, message, code = null, param = null, body = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.param = param;
    this.body = body;
  }
}

export function setCsrf(token) { csrfToken = token; }

/** Called with the ApiError when a call finds the session gone (401). */
export function onUnauthorized(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** Calls METHOD PATH with an optional JSON body; the parsed JSON answer, or ApiError. */
export async function api(method, path, body = undefined, { signal = null, quiet401 = false } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  const timeout = new AbortController();
  const timer = setTimeout(() => timeout.abort(), TIMEOUT_MS);
  if (signal) signal.addEventListener("abort", () => timeout.abort(), { once: true });
  let response;
  try {
    response = await fetch(path, {
      method, headers, credentials: "same-origin", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body), signal: timeout.signal,
    });
  } catch (err) {
    if (signal && signal.aborted) throw err;
    throw new ApiError(0, timeout.signal.aborted
      ? `No answer from the gateway within ${TIMEOUT_MS / 1000} s.`
      : "The gateway cannot be reached. Is omniroute still running?");
  } finally {
    clearTimeout(timer);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch (e) { data = null; }
  }
  if (!response.ok) {
    const err = data && data.error ? data.error : {};
    const message = typeof err === "string" ? err
      : err.message || `${response.status} ${response.statusText || "error"}`;
    const failure = new ApiError(response.status, message, err.code || null, err.param || null, data);
    if (response.status === 401 && !quiet401) listeners.forEach((fn) => fn(failure));
    throw failure;
  }
  return data;
}

export const get = (path, options) => api("GET", path, undefined, options);
export const post = (path, body = {}, options) => api("POST", path, body, options);
export const put = (path, body, options) => api("PUT", path, body, options);
export const patch = (path, body, options) => api("PATCH", path, body, options);
export const del = (path, options) => api("DELETE", path, undefined, options);

/** GET that answers null when the route does not exist (a feature not in this build). */
export async function optional(path, options) {
  try {
    return await get(path, options);
  } catch (err) {
    if (isMissing(err)) return null;
    throw err;
  }
}

/** Whether an error means "this route does not exist here" (not "this item"). */
export function isMissing(err) {
  if (!(err instanceof ApiError)) return false;
  if (err.status === 405) return true;
  return err.status === 404 && (/^Unknown route/.test(err.message) || err.body === null);
}

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}
