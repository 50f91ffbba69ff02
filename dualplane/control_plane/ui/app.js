// dualplane web UI: sign-in, boot (catalog, registry, preferences) and the hash router. Each
// view lives in its own module (newjob, jobs, job, gallery, uploadsview, compare).
//
// Why plain HTML + vanilla ES modules (no framework, no bundler): the control plane serves
// these files as package data, so there is no build step to run or keep in sync, nothing to
// download at install time or from a CDN at page load (air-gapped hosts work), and the page
// is a handful of small files that load in well under a second. The UI is a thin client of
// the public API (the same /jobs, /compose, /tasks, /uploads and /ws every other client uses),
// so it needs no server-side session or template either.

import { ApiError, clearToken, decodeJwt, get, getToken, login, logout, setToken, setUnauthorizedHandler } from "./api.js";
import { $, banner, h } from "./dom.js";
import { showCompare } from "./compare.js";
import { loadGallery, wireGallery } from "./gallery.js";
import { leaveJob, showJob, wireJob } from "./job.js";
import { startJobs, stopJobs, wireJobs } from "./jobs.js";
import { refreshPickers, renderGeneratorSelect, restorePreferences, wireNewJob } from "./newjob.js";
import { live, session } from "./session.js";
import { loadUploads, wireUploads } from "./uploadsview.js";

// -- sign-in --------------------------------------------------------------------------

function showWho() {
  const claims = decodeJwt(getToken());
  const who = $("#who");
  if (!claims) {
    who.textContent = "";
    $("#signout").hidden = true;
    return;
  }
  who.textContent = `${claims.sub ?? "?"}${claims.role ? ` (${claims.role})` : ""}`;
  who.title = claims.exp ? `token expires ${new Date(claims.exp * 1000).toLocaleString()}` : "";
  $("#signout").hidden = false;
}

function signOut(message) {
  live.close();
  clearToken();
  session.booted = false;
  showWho();
  location.hash = "#/signin";
  const err = $("#token-error");
  err.hidden = !message;
  err.textContent = message || "";
}

function fieldError(input, box, message) {
  box.hidden = false;
  box.textContent = message;
  input.setAttribute("aria-invalid", "true");
  input.focus();
}

async function signedIn() {
  showWho();
  location.hash = "#/new";
  await boot();
}

async function onTokenSignIn(ev) {
  ev.preventDefault();
  const input = $("#token");
  const err = $("#token-error");
  const token = input.value.trim().replace(/^Bearer\s+/i, "");
  err.hidden = true;
  if (!decodeJwt(token)) return fieldError(input, err, "This is not a JWT (three base64url parts separated by dots).");
  try {
    await get("/me/preferences", { token });
  } catch (e) {
    return fieldError(input, err, e instanceof ApiError ? `${e.problem.title || "Error"}: ${e.message}` : String(e));
  }
  input.removeAttribute("aria-invalid");
  input.value = "";
  setToken(token);
  await signedIn();
}

async function onPasswordSignIn(ev) {
  ev.preventDefault();
  const user = $("#login-user"), password = $("#login-password"), err = $("#login-error");
  err.hidden = true;
  for (const el of [user, password]) el.removeAttribute("aria-invalid");
  if (!user.value.trim()) return fieldError(user, err, "Enter your user name.");
  if (!password.value) return fieldError(password, err, "Enter your password.");
  $("#login-submit").disabled = true;
  try {
    await login(user.value.trim(), password.value);
  } catch (e) {
    const message = e.status === 401 ? "Wrong user name or password."
      : e.status === 429 ? "Too many attempts: wait a minute, then try again."
        : e.status === 404 ? "This control plane has no password sign-in; use a token."
          : `${e.problem?.title || "Error"}: ${e.message}`;
    return fieldError(password, err, message);
  } finally {
    $("#login-submit").disabled = false;
  }
  password.value = "";
  await signedIn();
}

// -- boot: catalog, registry, preferences ----------------------------------------------

async function boot() {
  if (session.booted) return;
  try {
    const [tasks, models, prefs] = await Promise.all([
      get("/tasks"), get("/models").catch(() => ({ models: [] })), get("/me/preferences").catch(() => ({})),
    ]);
    session.tasks = tasks.tasks;
    session.byName = new Map(session.tasks.map((t) => [t.name, t]));
    session.models = models.models || [];
    session.prefs = prefs || {};
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) banner(`Cannot load the task catalog: ${e.message}`);
    return;
  }
  session.booted = true;
  renderGeneratorSelect();
  restorePreferences();
  $("#filter-task").replaceChildren(h("option", { value: "", text: "all" }),
    ...session.tasks.map((t) => h("option", { value: t.name, text: t.name })));
  performance.mark("dualplane:tasks-rendered");
  document.documentElement.dataset.ready = "1";
  route();
}

// -- routing ---------------------------------------------------------------------------

const TITLES = { new: "New job", jobs: "Jobs", gallery: "Gallery", uploads: "Uploads", compare: "Compare" };

function show(view) {
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === view || (view === "job" && a.dataset.nav === "jobs")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (TITLES[view]) document.title = `${TITLES[view]} · dualplane`;
}

let lastView = null;
function route() {
  const hash = location.hash || "#/new";
  if (!getToken()) {
    stopJobs();
    show("signin");
    $("#login-user").focus();
    return;
  }
  if (!session.booted) return; // boot() routes when the catalog is in
  banner("");
  const jobMatch = hash.match(/^#\/jobs\/([A-Za-z0-9_-]{1,64})$/);
  const [path, query = ""] = hash.split("?");
  const view = jobMatch ? "job" : { "#/jobs": "jobs", "#/gallery": "gallery", "#/uploads": "uploads",
    "#/compare": "compare" }[path] || "new";
  if (view !== "jobs") stopJobs();
  if (view !== "job") leaveJob();
  show(view);
  if (view === "job") showJob(jobMatch[1]);
  else if (view === "jobs") startJobs();
  else if (view === "gallery") loadGallery();
  else if (view === "uploads") loadUploads();
  else if (view === "compare") showCompare(query);
  else if (view === "new" && lastView && lastView !== "new") refreshPickers();
  // a new view: focus its heading, so keyboard and screen-reader users start at the top of it
  if (lastView && lastView !== view) document.querySelector(`#view-${view} h1`)?.focus();
  lastView = view;
}

// -- wiring ----------------------------------------------------------------------------

function wire() {
  $("#signin-form").addEventListener("submit", onTokenSignIn);
  $("#login-form").addEventListener("submit", onPasswordSignIn);
  $("#signout").addEventListener("click", async () => { await logout(); signOut(""); });
  wireNewJob();
  wireJobs();
  wireJob();
  wireGallery();
  wireUploads();
  window.addEventListener("hashchange", route);
}

const endSession = (reason) => signOut(`Your session ended: ${reason}. Sign in again.`);
setUnauthorizedHandler(endSession);
live.onUnauthorized = endSession;
wire();
showWho();
route();
if (getToken()) boot();

// for tests and debugging: the live connection (e.g. `dualplane.live.drop()` to simulate a drop)
window.dualplane = { live, session };
