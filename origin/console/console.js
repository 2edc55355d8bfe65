// minicdn console: plain JavaScript, no build step, nothing loaded from elsewhere.
// Data from the API is written with textContent only, never as markup.
"use strict";

const TOKEN_KEY = "minicdn.console.token"; // sessionStorage: this tab only, gone when it closes
const PAGE = 50; // apps per page of the list
const VERSIONS_SHOWN = 20; // versions listed before "Show all"

const $ = (id) => document.getElementById(id);

// ---- small helpers -------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return el("span", { text: "–", title: "not made (yet)" });
  const units = ["B", "KiB", "MiB", "GiB"];
  let v = n, u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u += 1; }
  const text = u === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
  return el("data", { value: n, text });
}

function when(unix) {
  if (!unix) return "–";
  const d = new Date(unix * 1000);
  const pad = (x) => String(x).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

// On a phone a table's rows stack as cards (console.css); each cell then shows its column's
// name, copied here from the table's head.
function labelCells(table) {
  const heads = [...table.tHead.rows[0].cells].map((c) => c.textContent);
  for (const body of table.tBodies) {
    for (const row of body.rows) {
      if (row.cells.length !== heads.length) continue;
      [...row.cells].forEach((c, i) => c.setAttribute("data-label", heads[i]));
    }
  }
  return table;
}

function option(value, text) {
  return el("option", { value, text: text || value });
}

// ---- the API -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  toString() {
    return `${this.code || this.status}: ${this.message}`;
  }
}

async function api(method, path, { body, token, raw } = {}) {
  const headers = { Authorization: `Bearer ${token || sessionStorage.getItem(TOKEN_KEY) || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit", cache: "no-store", redirect: "error",
    });
  } catch (e) {
    throw new ApiError(0, "network", `the origin did not answer (${e.message})`);
  }
  if (!resp.ok) {
    let code = "", message = `HTTP ${resp.status}`;
    try {
      const err = await resp.json();
      code = String(err.error || "");
      message = String(err.message || message);
    } catch (_) { /* not the JSON error body: keep the status */ }
    const error = new ApiError(resp.status, code, message);
    if (resp.status === 401 && !token) signOut("The origin no longer accepts this token: sign in again.");
    throw error;
  }
  return raw ? new Uint8Array(await resp.arrayBuffer()) : resp.json();
}

const enc = encodeURIComponent;

// A signed ref (common/manifest.py) is a msgpack envelope whose payload is msgpack too: just
// enough of msgpack to read its serial and version.  The signature is the client's to check.
function unpack(buf) {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let at = 0;
  const text = new TextDecoder();
  const take = (n) => { const out = buf.subarray(at, at + n); at += n; if (out.length < n) throw new Error("short msgpack"); return out; };
  const u = (n) => { const v = n === 1 ? view.getUint8(at) : n === 2 ? view.getUint16(at) : n === 4 ? view.getUint32(at) : Number(view.getBigUint64(at)); at += n; return v; };
  const s = (n) => { const v = n === 1 ? view.getInt8(at) : n === 2 ? view.getInt16(at) : n === 4 ? view.getInt32(at) : Number(view.getBigInt64(at)); at += n; return v; };
  const map = (n) => { const o = {}; for (let i = 0; i < n; i++) { const k = one(); o[k] = one(); } return o; };
  const arr = (n) => { const a = []; for (let i = 0; i < n; i++) a.push(one()); return a; };
  function one() {
    const b = u(1);
    if (b <= 0x7f) return b;
    if (b >= 0xe0) return b - 0x100;
    if ((b & 0xf0) === 0x80) return map(b & 0x0f);
    if ((b & 0xf0) === 0x90) return arr(b & 0x0f);
    if ((b & 0xe0) === 0xa0) return text.decode(take(b & 0x1f));
    switch (b) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return take(u(1));
      case 0xc5: return take(u(2));
      case 0xc6: return take(u(4));
      case 0xca: { const v = view.getFloat32(at); at += 4; return v; }
      case 0xcb: { const v = view.getFloat64(at); at += 8; return v; }
      case 0xcc: return u(1);
      case 0xcd: return u(2);
      case 0xce: return u(4);
      case 0xcf: return u(8);
      case 0xd0: return s(1);
      case 0xd1: return s(2);
      case 0xd2: return s(4);
      case 0xd3: return s(8);
      case 0xd9: return text.decode(take(u(1)));
      case 0xda: return text.decode(take(u(2)));
      case 0xdb: return text.decode(take(u(4)));
      case 0xdc: return arr(u(2));
      case 0xdd: return arr(u(4));
      case 0xde: return map(u(2));
      case 0xdf: return map(u(4));
      default: throw new Error(`msgpack type 0x${b.toString(16)} not expected in a ref`);
    }
  }
  return one();
}

function openRef(envelope) {
  return unpack(unpack(envelope).payload);
}

// ---- sign in and out -----------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const input = $("token");
  const token = input.value;
  $("signin-error").textContent = "";
  try {
    await api("GET", "/v1/token", { token });
  } catch (e) {
    input.value = "";
    $("signin-error").textContent = e.status === 401
      ? `Wrong token: the origin refused it (${e.message}).`
      : `Could not sign in: ${e}`;
    input.focus();
    return;
  }
  input.value = "";
  sessionStorage.setItem(TOKEN_KEY, token);
  showWorkspace();
}

function showWorkspace() {
  $("signin").hidden = true;
  $("workspace").hidden = false;
  $("signout").hidden = false;
  loadApps(true);
  $("search").focus();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.app = null;
  clear($("app-list"));
  $("app").hidden = true;
  $("workspace").hidden = true;
  $("signout").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = typeof message === "string" ? message : "";
  $("token").focus();
}

// ---- the app list --------------------------------------------------------------------------

const state = { app: null, info: null, cursor: null, query: 0, allVersions: false };

async function loadApps(reset) {
  const prefix = $("search").value.trim().toLowerCase();
  const ticket = ++state.query; // answers to older searches are dropped
  if (reset) state.cursor = null;
  const params = new URLSearchParams({ limit: String(PAGE) });
  if (prefix) params.set("prefix", prefix);
  if (state.cursor) params.set("cursor", state.cursor);
  $("apps-status").textContent = "Loading…";
  let page;
  try {
    page = await api("GET", `/v1/apps?${params}`);
  } catch (e) {
    if (ticket !== state.query) return;
    if (reset) clear($("app-list"));
    $("apps-status").textContent = `${e}`;
    $("more").hidden = true;
    return;
  }
  if (ticket !== state.query) return;
  const list = $("app-list");
  if (reset) clear(list);
  for (const name of page.apps) {
    const button = el("button", { type: "button", text: name, on: { click: () => openApp(name) } });
    if (name === state.app) button.setAttribute("aria-current", "true");
    list.append(el("li", {}, button));
  }
  state.cursor = page.next;
  $("more").hidden = !page.next;
  const shown = list.children.length;
  $("apps-status").textContent = shown === 0
    ? (prefix ? `No app id starts with “${prefix}”.` : "No apps yet.")
    : `${shown} app${shown === 1 ? "" : "s"}${page.next ? " so far" : ""}.`;
}

let searchTimer = null;
function onSearch() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => loadApps(true), 200);
}

// ---- one app -------------------------------------------------------------------------------

async function openApp(name) {
  state.app = name;
  state.allVersions = false;
  for (const b of $("app-list").querySelectorAll("button")) {
    if (b.textContent === name) b.setAttribute("aria-current", "true");
    else b.removeAttribute("aria-current");
  }
  $("app").hidden = false;
  $("app-title").textContent = name;
  $("action-result").textContent = "";
  $("action-error").textContent = "";
  clear($("compare-result"));
  $("history").hidden = true;
  $("history-hint").hidden = false;
  // Nothing of the app shown before may stay until this one's answer: an action must never
  // pair this app with another's version.
  state.info = null;
  clear($("channels"));
  clear($("versions").tBodies[0]);
  for (const id of ["promote-version", "rollout-channel", "rollout-version", "compare-from", "compare-to"]) clear($(id));
  $("app-title").focus();
  await refreshApp();
}

async function refreshApp() {
  const name = state.app;
  $("app-status").textContent = "Loading…";
  let info;
  try {
    info = await api("GET", `/v1/apps/${enc(name)}`);
  } catch (e) {
    $("app-status").textContent = "";
    $("action-error").textContent = `${e}`;
    return;
  }
  if (name !== state.app) return;
  state.info = info;
  $("app-status").textContent = "";
  renderChannels(info);
  renderChoices(info);
  renderVersions(info);
}

function qrFigure(app, kind, value) {
  const q = `${kind}=${enc(value)}`;
  const base = `/v1/apps/${enc(app)}/qr`;
  const caption = el("figcaption", { text: "" });
  api("GET", `/v1/apps/${enc(app)}/link?${q}`).then(
    (r) => { caption.textContent = r.link; },
    (e) => { caption.textContent = `${e}`; },
  );
  return el("figure", { class: "qr" },
    el("img", { src: `${base}.svg?${q}`, alt: `QR code of ${app} ${kind} ${value}`, width: 160, height: 160 }),
    caption,
    el("div", { class: "links" },
      el("a", { href: `${base}.svg?${q}`, download: `${app}-${value}.svg`, text: "Download SVG" }),
      el("a", { href: `${base}.png?${q}`, download: `${app}-${value}.png`, text: "Download PNG" })));
}

function renderChannels(info) {
  const box = clear($("channels"));
  const names = Object.keys(info.channels).sort();
  if (names.length === 0) box.append(el("p", { class: "hint", text: "No channel yet: promote a version." }));
  for (const name of names) {
    const c = info.channels[name];
    const pending = info.pending[name];
    const dl = el("dl", {},
      el("dt", { text: "Version" }), el("dd", { text: c.version }),
      el("dt", { text: "Serial" }), el("dd", { text: String(c.serial) }),
      el("dt", { text: "Expires" }), el("dd", { text: when(c.expires) }),
      el("dt", { text: "Rollout" }),
      el("dd", { text: c.rollout ? `${c.rollout.version} to ${c.rollout.percent}%` : "none" }));
    if (pending) {
      dl.append(el("dt", { text: "Pending" }),
        el("dd", { text: `${pending.version}${pending.percent === null ? "" : ` (${pending.percent}%)`} after enrichment` }));
    }
    box.append(el("article", { class: "card", "aria-label": `Channel ${name}` },
      el("h4", { text: name }),
      dl,
      qrFigure(info.app, "channel", name),
      el("div", { class: "row" },
        el("button", { type: "button", text: `Roll back ${name}`, on: { click: () => rollBack(name) } }),
        el("button", { type: "button", text: `History of ${name}`, on: { click: () => showHistory(name) } }))));
  }
}

function renderChoices(info) {
  const versions = info.versions.map((v) => v.version).reverse(); // newest first
  const fill = (id, values, selected) => {
    const select = clear($(id));
    for (const v of values) select.append(option(v));
    if (selected !== undefined && values.includes(selected)) select.value = selected;
  };
  const keep = (id) => $(id).value;
  fill("promote-version", versions, keep("promote-version"));
  fill("rollout-version", versions, keep("rollout-version"));
  const channels = Object.keys(info.channels).sort();
  fill("rollout-channel", channels, keep("rollout-channel"));
  const list = clear($("channel-names"));
  for (const c of channels) list.append(option(c));
  fill("compare-from", versions, keep("compare-from") || versions[1]);
  fill("compare-to", versions, keep("compare-to") || versions[0]);
}

function renderVersions(info) {
  const body = clear($("versions").tBodies[0]);
  const all = info.versions.slice().reverse();
  const shown = state.allVersions ? all : all.slice(0, VERSIONS_SHOWN);
  for (const v of shown) {
    const cells = {
      files: el("td", { class: "num", text: "…" }),
      raw: el("td", { class: "num", text: "…" }),
      chunks: el("td", { class: "num", text: "…" }),
      bundle: el("td", { class: "num", text: "…" }),
    };
    const detail = el("tr", { class: "detail", hidden: true });
    const toggle = el("button", { type: "button", "aria-expanded": "false", text: `Packages of ${v.version}` });
    toggle.addEventListener("click", () => {
      const open = toggle.getAttribute("aria-expanded") !== "true";
      toggle.setAttribute("aria-expanded", String(open));
      detail.hidden = !open;
    });
    body.append(el("tr", { "data-version": v.version },
      el("th", { scope: "row", text: v.version }),
      el("td", { text: when(v.created) }),
      el("td", { text: v.enriched ? "yes" : "not yet" }),
      cells.files, cells.raw, cells.chunks, cells.bundle,
      el("td", {}, toggle)), detail);
    loadVersion(info.app, v.version, cells, detail);
  }
  labelCells($("versions"));
  const more = $("all-versions");
  more.hidden = all.length <= shown.length;
  more.textContent = `Show all ${all.length} versions`;
}

async function loadVersion(app, version, cells, detail) {
  let v;
  try {
    v = await api("GET", `/v1/apps/${enc(app)}/versions/${enc(version)}`);
  } catch (e) {
    cells.files.textContent = `${e}`;
    return;
  }
  cells.files.textContent = String(v.files);
  clear(cells.raw).append(bytes(v.raw_bytes));
  clear(cells.chunks).append(bytes(v.chunk_bytes));
  clear(cells.bundle).append(bytes(v.bundle_bytes));
  const table = el("table", { class: "stack" },
    el("caption", { text: `Packages of ${version}` }),
    el("thead", {}, el("tr", {}, ...["Package", "Kind", "Files", "Size", "Chunks", "Bundle", "Deltas from"].map(
      (h) => el("th", { scope: "col", text: h })))));
  const tb = el("tbody");
  for (const p of v.packages) {
    const kind = p.name === "__APP__" ? "main" : p.independent ? "independent subpackage" : "subpackage";
    const deltas = p.deltas.map((d) => `${d.from_version || d.from_manifest.slice(0, 12)} (${bytes(d.bytes).textContent})`);
    tb.append(el("tr", {},
      el("th", { scope: "row", text: p.name }), el("td", { text: kind }),
      el("td", { class: "num", text: String(p.files) }),
      el("td", { class: "num" }, bytes(p.raw_bytes)), el("td", { class: "num" }, bytes(p.chunk_bytes)),
      el("td", { class: "num" }, bytes(p.bundle_bytes)),
      el("td", { text: deltas.length ? [...new Set(deltas)].join(", ") : "none" })));
  }
  table.append(tb);
  labelCells(table);
  detail.append(el("td", { colspan: 8 }, el("div", { class: "scroll" }, table), qrFigure(app, "version", version)));
}

// ---- history and comparison ----------------------------------------------------------------

async function showHistory(channel) {
  let h;
  try {
    h = await api("GET", `/v1/apps/${enc(state.app)}/channels/${enc(channel)}/history`);
  } catch (e) {
    $("action-error").textContent = `${e}`;
    return;
  }
  const table = $("history");
  $("history-caption").textContent =
    `Channel ${channel}: now ${h.version} (serial ${h.serial}); a rollback goes to ${h.rollback_to || "nothing (no earlier version)"}. Newest first.`;
  const body = clear(table.tBodies[0]);
  for (const e of h.entries.slice().reverse()) {
    body.append(el("tr", {},
      el("td", { text: when(e.time) }), el("td", { class: "num", text: e.serial === null ? "–" : String(e.serial) }),
      el("td", { text: e.kind || "–" }), el("td", { text: e.version }),
      el("td", { text: e.rollout ? `${e.rollout.version} to ${e.rollout.percent}%` : "–" })));
  }
  labelCells(table);
  table.hidden = false;
  $("history-hint").hidden = true;
  $("history-title").scrollIntoView({ block: "nearest" });
}

function fileList(title, rows, render) {
  if (!rows.length) return null;
  const LIMIT = 200;
  const ul = el("ul", { class: "files" });
  for (const r of rows.slice(0, LIMIT)) ul.append(el("li", { text: render(r) }));
  if (rows.length > LIMIT) ul.append(el("li", { text: `… and ${rows.length - LIMIT} more` }));
  return el("div", {}, el("strong", { text: `${title} (${rows.length})` }), ul);
}

async function compare(event) {
  event.preventDefault();
  const from = $("compare-from").value, to = $("compare-to").value;
  const out = clear($("compare-result"));
  out.append(el("p", { class: "status", text: "Comparing…" }));
  let c;
  try {
    c = await api("GET", `/v1/apps/${enc(state.app)}/compare?from=${enc(from)}&to=${enc(to)}`);
  } catch (e) {
    clear(out).append(el("p", { class: "error", role: "alert", text: `${e}` }));
    return;
  }
  const total = el("p", {}, `An update from ${from} to ${to} costs `, bytes(c.bytes), " (the cheapest plan per package).");
  const table = el("table", { class: "stack" },
    el("caption", { text: `Update ${from} → ${to}, per package: bytes by each plan` }),
    el("thead", {}, el("tr", {}, ...["Package", "State", "Delta", "Chunks", "Bundle", "Cheapest", "Files"].map(
      (h) => el("th", { scope: "col", text: h })))));
  const tb = el("tbody");
  for (const p of c.packages) {
    const files = el("div", {},
      fileList("Changed", p.files.changed, (f) => `${f[0]} (${f[1]} → ${f[2]} B)`),
      fileList("Added", p.files.added, (f) => `${f[0]} (${f[1]} B)`),
      fileList("Removed", p.files.removed, (f) => `${f[0]} (${f[1]} B)`));
    if (!files.firstChild) files.textContent = "no change";
    tb.append(el("tr", { "data-package": p.name },
      el("th", { scope: "row", text: p.name }), el("td", { text: p.state }),
      el("td", { class: "num" }, bytes(p.plans.delta)), el("td", { class: "num" }, bytes(p.plans.chunks)),
      el("td", { class: "num" }, bytes(p.plans.bundle)),
      el("td", {}, el("span", {}, `${p.cheapest} `, bytes(p.bytes))), el("td", {}, files)));
  }
  table.append(tb);
  labelCells(table);
  clear(out).append(total, el("div", { class: "scroll" }, table));
}

// ---- actions: each confirmed first, each answered with the new ref's serial or the refusal --

function confirmAction(text) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    const done = (ok) => {
      $("confirm-ok").removeEventListener("click", yes);
      $("confirm-cancel").removeEventListener("click", no);
      dialog.removeEventListener("cancel", no);
      if (dialog.open) dialog.close();
      resolve(ok);
    };
    const yes = () => done(true);
    const no = (e) => { if (e) e.preventDefault(); done(false); };
    $("confirm-ok").addEventListener("click", yes);
    $("confirm-cancel").addEventListener("click", no);
    dialog.addEventListener("cancel", no); // Escape
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

async function act(question, run, done) {
  $("action-result").textContent = "";
  $("action-error").textContent = "";
  if (!(await confirmAction(question))) {
    $("action-result").textContent = "Cancelled: nothing changed.";
    return;
  }
  try {
    $("action-result").textContent = done(await run());
  } catch (e) {
    $("action-error").textContent = `Refused by the origin: ${e}`;
  }
  await refreshApp();
}

function promote(event) {
  event.preventDefault();
  const version = $("promote-version").value;
  const channel = $("promote-channel").value.trim();
  const app = state.app;
  act(`Promote ${app} ${version} to channel ${channel}? Every user of ${channel} gets ${version}.`,
    async () => openRef(await api("PUT", `/v1/apps/${enc(app)}/channels/${enc(channel)}`, { body: { version }, raw: true })),
    (ref) => `Promoted: ${channel} serves ${ref.version}; new signed ref serial ${ref.serial}.`);
}

function rollout(event) {
  event.preventDefault();
  const channel = $("rollout-channel").value;
  const version = $("rollout-version").value;
  const percent = Number($("rollout-percent").value);
  const app = state.app;
  const current = state.info && state.info.channels[channel];
  if (!current) {
    $("action-error").textContent = "Choose a channel that serves a version first.";
    return;
  }
  act(`Rollout ${app} ${version} to ${percent}% of channel ${channel}? The others keep ${current.version}.`,
    async () => openRef(await api("PUT", `/v1/apps/${enc(app)}/channels/${enc(channel)}`,
      { body: { version: current.version, rollout: { version, percent } }, raw: true })),
    (ref) => `Rollout: ${channel} gives ${ref.rollout ? `${ref.rollout.version} to ${ref.rollout.percent}%` : "no rollout"} over ${ref.version}; new signed ref serial ${ref.serial}.`);
}

function rollBack(channel) {
  const app = state.app;
  act(`Roll back channel ${channel} of ${app} to the version before? Any rollout on it ends.`,
    () => api("POST", `/v1/apps/${enc(app)}/channels/${enc(channel)}/rollback`),
    (r) => `Rolled back: ${channel} went from ${r.from} to ${r.version}; new signed ref serial ${r.serial}.`);
}

// ---- start ---------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut("Signed out: the token is forgotten."));
  $("search").addEventListener("input", onSearch);
  $("more").addEventListener("click", () => loadApps(false));
  $("promote-form").addEventListener("submit", promote);
  $("rollout-form").addEventListener("submit", rollout);
  $("compare-form").addEventListener("submit", compare);
  $("all-versions").addEventListener("click", () => { state.allVersions = true; renderVersions(state.info); });
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) {
    $("token").focus();
    return;
  }
  api("GET", "/v1/token", { token }).then(showWorkspace, (e) => signOut(
    e.status === 401 ? "The origin no longer accepts the saved token: sign in again." : `${e}`));
});
