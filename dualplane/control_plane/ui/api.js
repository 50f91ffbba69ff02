// The API client of the UI: bearer token (localStorage), JSON requests with problem+json
// errors, a refresh of the access token on a 401 (when signed in with a password), uploads
// with progress (XHR: fetch cannot report upload progress), and one WebSocket for live job
// updates (resuming with `since` after a drop).

const TOKEN_KEY = "dualplane.token";
const REFRESH_KEY = "dualplane.refresh";

export function getToken() {
  try { return localStorage.getItem(TOKEN_KEY) || ""; } catch { return ""; }
}

/** Store the access token (and the refresh token of a password sign-in; a pasted token has none). */
export function setToken(token, refresh = null) {
  localStorage.setItem(TOKEN_KEY, token);
  if (refresh) localStorage.setItem(REFRESH_KEY, refresh);
  else localStorage.removeItem(REFRESH_KEY);
}

export function clearToken() {
  localStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(REFRESH_KEY);
}

function getRefresh() {
  try { return localStorage.getItem(REFRESH_KEY) || ""; } catch { return ""; }
}

let onUnauthorized = () => {};
/** Called when the session cannot go on (401 and no refresh, or the refresh refused). */
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

/** The JWT's payload (not verified: the server does that), or null when it is not a JWT. */
export function decodeJwt(token) {
  const parts = (token || "").split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const payload = JSON.parse(new TextDecoder().decode(bytes));
    return payload && typeof payload === "object" ? payload : null;
  } catch {
    return null;
  }
}

/** An API error: `status`, and the problem document (`title`, `detail`, `node_errors`...). */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

/** `fetch` + JSON. Returns {status, body}; throws ApiError for 4xx/5xx. A 401 with a stored
 * refresh token refreshes the access token once and retries; a 401 that stays one signs out
 * (except for an explicit `token`: the sign-in form checks a pasted token that way). */
export async function request(method, path, { body, query, token, retried = false } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (Array.isArray(v)) v.forEach((x) => url.searchParams.append(k, x));
    else if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  const headers = { Accept: "application/json" };
  const auth = token ?? getToken();
  if (auth) headers.Authorization = `Bearer ${auth}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, { title: "Network error", detail: `cannot reach the control plane (${err.message})` });
  }
  const parsed = parseBody(await response.text());
  if (response.status === 401 && token === undefined && !path.startsWith("/auth/")) {
    if (!retried && getRefresh() && await refreshToken()) {
      return request(method, path, { body, query, retried: true });
    }
    onUnauthorized(parsed?.detail || "the token was refused");
  }
  if (!response.ok) throw new ApiError(response.status, parsed);
  return { status: response.status, body: parsed };
}

function parseBody(text) {
  if (!text) return null;
  try { return JSON.parse(text); } catch { return { detail: text.slice(0, 300) }; }
}

let refreshing = null;
/** Trade the stored refresh token for a new pair; one request at a time (parallel 401s share it). */
export function refreshToken() {
  refreshing ??= (async () => {
    try {
      const { body } = await request("POST", "/auth/refresh", { body: { refresh_token: getRefresh() }, token: "" });
      setToken(body.access_token, body.refresh_token || getRefresh());
      return true;
    } catch {
      return false;
    } finally {
      setTimeout(() => { refreshing = null; }, 0);
    }
  })();
  return refreshing;
}

/** Sign in with a user name and password: stores both tokens; throws ApiError (401, 429...). */
export async function login(username, password) {
  const { body } = await request("POST", "/auth/login", { body: { username, password }, token: "" });
  setToken(body.access_token, body.refresh_token);
  return body;
}

/** End a password session on the server too (its refresh token stops working). */
export async function logout() {
  const refresh = getRefresh();
  if (!refresh) return;
  try {
    await request("POST", "/auth/logout", { body: { refresh_token: refresh }, token: "" });
  } catch { /* signed out here either way */ }
}

/**
 * Upload one file as the raw request body (`POST /uploads?name=...`), reporting progress with
 * `onProgress(fraction)`. Resolves to the upload's record; rejects with an ApiError (413, 415...).
 */
export function uploadFile(file, { name, consent = false, onProgress = () => {}, retried = false } = {}) {
  return new Promise((resolve, reject) => {
    const url = new URL("/uploads", location.origin);
    url.searchParams.set("name", name);
    if (consent) url.searchParams.set("consent", "true");
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.setRequestHeader("Authorization", `Bearer ${getToken()}`);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    xhr.upload.onprogress = (ev) => { if (ev.lengthComputable) onProgress(ev.loaded / ev.total); };
    xhr.onerror = () => reject(new ApiError(0, { title: "Network error", detail: "the upload did not reach the control plane" }));
    xhr.onload = async () => {
      const parsed = parseBody(xhr.responseText);
      if (xhr.status === 401 && !retried && getRefresh() && await refreshToken()) {
        uploadFile(file, { name, consent, onProgress, retried: true }).then(resolve, reject);
        return;
      }
      if (xhr.status === 401) onUnauthorized(parsed?.detail || "the token was refused");
      if (xhr.status >= 200 && xhr.status < 300) resolve(parsed);
      else reject(new ApiError(xhr.status, parsed));
    };
    xhr.send(file);
  });
}

export const get = (path, opts) => request("GET", path, opts).then((r) => r.body);
export const send = (method, path, body, opts = {}) => request(method, path, { ...opts, body }).then((r) => r.body);

/**
 * One WebSocket for every job the page follows. `subscribe(jobId, handler)`: the handler gets
 * the `snapshot` and every `update` in order, exactly once per seq (the hub guarantees order;
 * after a reconnect we resubscribe with `since` = the last seq seen, so nothing is missed).
 */
export class Live {
  constructor({ onState = () => {}, onUnauthorized = () => {} } = {}) {
    this.onState = onState;
    this.onUnauthorized = onUnauthorized;
    this.subs = new Map(); // jobId -> {last, handler}
    this.ws = null;
    this.backoff = 250;
    this.timer = null;
    this.pinger = null;
    this.stopped = true;
  }

  subscribe(jobId, handler) {
    this.subs.set(jobId, { last: 0, handler });
    this.stopped = false;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this._send(jobId);
    else this._connect();
  }

  unsubscribe(jobId) {
    if (!this.subs.delete(jobId)) return;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ type: "unsubscribe", jobId }));
    }
  }

  close() {
    this.stopped = true;
    this.subs.clear();
    clearTimeout(this.timer);
    clearInterval(this.pinger);
    if (this.ws) this.ws.close(1000, "bye");
    this.ws = null;
    this.onState("off");
  }

  /** Drop the connection as if the network failed (tests, and "reconnect" after sleep). */
  drop() { if (this.ws) this.ws.close(4000, "dropped by the page"); }

  _send(jobId) {
    const sub = this.subs.get(jobId);
    // since=0 on the first subscribe replays the whole event log after the snapshot.
    this.ws.send(JSON.stringify({ type: "subscribe", jobId, since: sub.last }));
  }

  _connect() {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) return;
    clearTimeout(this.timer);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/ws?token=${encodeURIComponent(getToken())}`);
    this.ws = ws;
    this.onState("connecting");
    ws.onopen = () => {
      this.backoff = 250;
      this.onState("live");
      for (const jobId of this.subs.keys()) this._send(jobId);
      clearInterval(this.pinger);
      this.pinger = setInterval(() => ws.readyState === WebSocket.OPEN && ws.send('{"type":"ping"}'), 25000);
    };
    ws.onmessage = (msg) => {
      let m;
      try { m = JSON.parse(msg.data); } catch { return; }
      const sub = m.jobId ? this.subs.get(m.jobId) : null;
      if (!sub) return;
      if (m.type === "update") {
        if (m.seq <= sub.last) return; // already seen (duplicate across a reconnect)
        sub.last = m.seq;
      }
      sub.handler(m);
    };
    ws.onclose = (ev) => {
      clearInterval(this.pinger);
      if (this.ws === ws) this.ws = null;
      if (ev.code === 4401) {
        // an expired access token: a password session refreshes it and reconnects
        if (getRefresh() && !this.stopped) {
          refreshToken().then((ok) => (ok ? this._connect() : this.onUnauthorized(ev.reason || "token rejected")));
          return;
        }
        this.onState("off");
        this.onUnauthorized(ev.reason || "token rejected");
        return;
      }
      if (this.stopped || this.subs.size === 0) { this.onState("off"); return; }
      this.onState("reconnecting");
      this.timer = setTimeout(() => this._connect(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 5000);
    };
  }
}
