// The agent board: plain JavaScript, no build step, nothing from elsewhere.
// Data is written with textContent only, never as HTML.
"use strict";

const STATUS_LABELS = {
  available: "Available",
  on_call: "On a call",
  paused: "Paused",
  after_call_work: "After-call work",
  on_break: "On a break",
  in_training: "In training",
  offline: "Offline",
};

const $ = (id) => document.getElementById(id);
// agent -> { status, since_ms, changed_on, online, seq }; `seq` is the change's number on the
// bus topic: the order every instance agrees on (publishers' clocks may not).
const board = new Map();
// Who is connected, pushed by the stream: agent -> Set of the instances holding one of their
// event streams. An agent is online while the set is not empty. `null` until the stream's
// `hello` brought the whole picture (the `online` of GET /api/agents stands in until then).
let presence = null;
let me = null;
let stream = null;
let reconnectTimer = null;
let reconnectDelay = 500;
let statusTimer = null;
let statsOn = false;

// The sequence number in an SSE id (`<stream id>.<epoch>.<sequence>`), or null.
function seqOf(id) {
  const n = Number((id || "").split(".").pop());
  return Number.isSafeInteger(n) && n > 0 ? n : null;
}

// The server's problem+json `detail`, or a plain sentence.
async function problem(res) {
  try {
    const body = await res.json();
    if (body && body.detail) return body.detail;
  } catch (_) { /* not JSON */ }
  return `the server answered ${res.status}`;
}

async function api(method, path, body) {
  const init = { method, headers: { accept: "application/json" } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  return fetch(path, init);
}

function setStreamState(text, cls) {
  const el = $("stream-state");
  el.textContent = text;
  el.className = cls || "";
}

function renderRow(agent) {
  const entry = board.get(agent);
  const tbody = $("agents").tBodies[0];
  let row = tbody.querySelector(`tr[data-agent="${CSS.escape(agent)}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.agent = agent;
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = agent;
    row.append(name);
    for (const cls of ["status", "presence", "instance", "since"]) {
      const td = document.createElement("td");
      td.className = cls;
      row.append(td);
    }
    tbody.append(row);
  }
  row.dataset.status = entry.status;
  row.querySelector(".status").textContent = STATUS_LABELS[entry.status] || entry.status;
  const online = isOnline(agent);
  const cell = row.querySelector(".presence");
  cell.textContent = online ? "online" : "away";
  cell.className = "presence " + (online ? "online" : "away");
  row.querySelector(".instance").textContent = entry.changed_on || "—";
  row.querySelector(".since").textContent = entry.since_ms
    ? new Date(entry.since_ms).toLocaleTimeString()
    : "—";
  return row;
}

function isOnline(agent) {
  if (presence) {
    const at = presence.get(agent);
    return !!at && at.size > 0;
  }
  const entry = board.get(agent);
  return !!entry && entry.online === true;
}

// The whole picture (`{agent: [instances]}`), from `hello` or after lost diffs.
function setPresence(picture) {
  if (!picture || typeof picture !== "object") return;
  presence = new Map();
  for (const [agent, instances] of Object.entries(picture)) {
    if (Array.isArray(instances)) presence.set(agent, new Set(instances));
  }
  for (const agent of board.keys()) renderRow(agent);
}

// One diff: `agent` has (`online`) or no longer has a stream on `instance`.
function applyPresence(diff) {
  if (!presence || !diff || typeof diff.agent !== "string") return;
  let at = presence.get(diff.agent);
  if (!at) {
    at = new Set();
    presence.set(diff.agent, at);
  }
  if (diff.online) at.add(diff.instance);
  else at.delete(diff.instance);
  if (board.has(diff.agent)) renderRow(diff.agent);
}

function flash(row) {
  row.classList.remove("changed");
  void row.offsetWidth; // restart the animation
  row.classList.add("changed");
}

// A change from the stream (`inOrder`: in the topic's order, always applied) or from our own
// PUT (applied unless the board already holds a later change).
function applyChange(change, seq, inOrder) {
  const old = board.get(change.agent);
  if (!inOrder && old && old.seq != null && seq != null && old.seq >= seq) return;
  board.set(change.agent, {
    status: change.status,
    since_ms: change.at_ms,
    changed_on: change.instance,
    online: old ? old.online : false,
    seq: seq != null ? seq : (old ? old.seq : null),
  });
  flash(renderRow(change.agent));
  if (change.agent === me) checkOwnStatus(change.status);
}

function checkOwnStatus(status) {
  const radio = document.querySelector(`input[name="status"][value="${CSS.escape(status)}"]`);
  if (radio) radio.checked = true;
}

// The whole board, after login and after a gap (no polling: changes and presence are pushed by
// the stream). Any instance may answer, one that knows less than the stream told us included: a
// row is replaced only by a later change (by sequence number).
async function loadAgents() {
  const res = await api("GET", "/api/agents");
  if (res.status === 401) return showLogin();
  if (!res.ok) return;
  const body = await res.json();
  for (const a of body.agents) {
    const old = board.get(a.agent);
    const later = !old || (a.seq != null && (old.seq == null || a.seq > old.seq));
    if (later) {
      board.set(a.agent, {
        status: a.status,
        since_ms: a.since_ms,
        changed_on: a.changed_on,
        online: a.online,
        seq: a.seq,
      });
    } else {
      old.online = a.online;
    }
    renderRow(a.agent);
    if (a.agent === me) checkOwnStatus(board.get(a.agent).status);
  }
}

function reloadAgents() {
  loadAgents().catch(() => { /* unreachable for now: the stream's next gap or hello retries */ });
}

// The stream ended or failed for good: ask for a login if the session is gone, else reconnect.
async function streamLost() {
  try {
    const res = await api("GET", "/api/me");
    if (res.status === 401) return showLogin();
  } catch (_) { /* unreachable: retry below */ }
  const delay = reconnectDelay * (0.5 + Math.random() / 2);
  reconnectDelay = Math.min(reconnectDelay * 2, 15000);
  clearTimeout(reconnectTimer);
  reconnectTimer = setTimeout(() => { if (me) openStream(); }, delay);
}

function openStream() {
  if (stream) stream.close();
  clearTimeout(reconnectTimer);
  setStreamState("connecting…");
  // EventSource resumes by itself with Last-Event-ID after a dropped connection, on whichever
  // instance answers; a new EventSource (after it gave up) reloads the board instead.
  stream = new EventSource("/api/events");
  stream.addEventListener("hello", (e) => {
    try {
      const hello = JSON.parse(e.data);
      $("stream-instance").textContent = hello.instance;
      setPresence(hello.presence);
    } catch (_) { /* ignore a malformed greeting */ }
    // Flags may have changed while the stream was down (a 304 when they did not).
    refreshFlags();
    // So may the rollouts: read them whole, then follow the `rollout` events.
    loadRollouts();
    reconnectDelay = 500;
    setStreamState("live", "live");
  });
  stream.addEventListener("presence", (e) => {
    try {
      applyPresence(JSON.parse(e.data));
    } catch (_) { /* ignore a malformed diff */ }
  });
  stream.addEventListener("presence_snapshot", (e) => {
    try {
      setPresence(JSON.parse(e.data).presence);
    } catch (_) { /* ignore a malformed picture */ }
  });
  // The session ended (logged out here or elsewhere, expired): no reconnect with it.
  stream.addEventListener("session_ended", () => {
    stream.close();
    setStreamState("session ended", "down");
    streamLost();
  });
  stream.onmessage = (e) => {
    let change;
    try {
      change = JSON.parse(e.data);
    } catch (_) {
      return; // not a status change
    }
    applyChange(change, seqOf(e.lastEventId), true);
  };
  // History was lost or renumbered: forget the sequence numbers and reload.
  stream.addEventListener("gap", () => {
    for (const entry of board.values()) entry.seq = null;
    reloadAgents();
  });
  stream.addEventListener("dropped", () => reloadAgents());
  // A rollout's view changed (a decision on any instance, or this stage's counts).
  stream.addEventListener("rollout", (e) => {
    try {
      renderRollouts(JSON.parse(e.data));
    } catch (_) { /* ignore a malformed view */ }
  });
  // A flag changed (on any instance): read the flags again.
  stream.addEventListener("flags", () => refreshFlags());
  stream.onerror = () => {
    setStreamState("reconnecting…", "down");
    $("stream-instance").textContent = "not connected";
    if (stream.readyState === EventSource.CLOSED) {
      // The browser gave up (an error status, such as 401 once the session is gone): log in
      // again, or retry with backoff and jitter.
      streamLost();
    }
  };
}

function closeStream() {
  if (stream) stream.close();
  stream = null;
  presence = null;
  clearTimeout(reconnectTimer);
  setStreamState("offline");
  $("stream-instance").textContent = "not connected";
}

// Guarded rollouts: GET /api/rollouts after each `hello`, then `rollout` events (the whole
// view, at most one a second, only when it changed). Everything is written with textContent.
const ROLLOUT_STATES = {
  running: "running",
  paused: "paused",
  frozen: "frozen",
  completed: "completed",
  rolled_back: "rolled back",
  aborted: "aborted",
};

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function percentText(p) {
  return typeof p === "number" ? `${Number(p.toFixed(3))} %` : "—";
}

function armCells(arms, pick) {
  return ["control", "treatment"].map((name) => {
    const arm = arms && arms[name];
    return el("td", name, arm ? pick(arm) : "—");
  });
}

function renderRollout(r) {
  const article = el("article", "rollout");
  const state = typeof r.state === "string" ? r.state : "unknown";
  const stage = Number.isInteger(r.stage) ? r.stage : 0;
  article.dataset.flag = String(r.flag);
  article.dataset.state = state;
  article.dataset.stage = String(stage);
  if (state === "frozen") article.classList.add("frozen");

  const title = el("h3");
  title.append(el("code", "", String(r.flag)));
  title.append(el("span", `badge ${state}`, ROLLOUT_STATES[state] || state));
  article.append(title);
  if (state === "frozen") {
    article.append(el("p", "frozen-why",
      `Frozen: nothing is decided until Redis answers again (${r.frozenBecause || "no reason given"}).`));
  }

  // Stage progress: 5 % → 25 % → 100 %.
  const stages = el("ol", "stages");
  stages.setAttribute("aria-label", "Stages");
  (Array.isArray(r.stages) ? r.stages : []).forEach((p, i) => {
    const li = el("li", "", percentText(p));
    if (state === "completed" || i < stage) li.classList.add("done");
    else if (i === stage) {
      const stopped = state === "rolled_back" || state === "aborted";
      li.classList.add(stopped ? "stopped" : "current");
      li.setAttribute("aria-current", "step");
    }
    stages.append(li);
  });
  article.append(stages);
  const share = el("p", "share",
    `The new variant serves ${percentText(r.percent)} of the traffic` +
    (state === "running" || state === "paused" || state === "frozen"
      ? ` (stage ${stage + 1} of ${Array.isArray(r.stages) ? r.stages.length : "?"}).`
      : "."));
  article.append(share);

  // The arms side by side (the current stage, the whole fleet's numbers).
  if (r.arms) {
    const table = el("table", "arms");
    table.append(el("caption", "", "This stage, every instance"));
    const head = el("tr");
    head.append(el("td"), el("th", "", "Control (old)"), el("th", "", "Treatment (new)"));
    for (const th of head.querySelectorAll("th")) th.scope = "col";
    const thead = el("thead");
    thead.append(head);
    table.append(thead);
    const body = el("tbody");
    const q = r.arms.control && typeof r.arms.control.latencyQuantile === "number"
      ? Math.round(r.arms.control.latencyQuantile * 100) : 95;
    const rows = [
      ["Requests", "requests", (a) => String(a.requests ?? 0)],
      ["Error ratio", "error-ratio", (a) =>
        typeof a.errorRatio === "number" ? `${(a.errorRatio * 100).toFixed(2)} %` : "—"],
      [`p${q} latency`, "latency", (a) =>
        typeof a.latencyMs === "number" ? `${a.latencyMs.toFixed(1)} ms` : "—"],
    ];
    for (const [label, cls, pick] of rows) {
      const tr = el("tr", cls);
      const th = el("th", "", label);
      th.scope = "row";
      tr.append(th, ...armCells(r.arms, pick));
      body.append(tr);
    }
    table.append(body);
    article.append(table);
  }

  // The last decision, with its reason.
  const d = r.lastDecision;
  if (d) {
    const p = el("p", "decision");
    p.dataset.action = String(d.action);
    const when = typeof d.atMs === "number" ? new Date(d.atMs).toLocaleTimeString() : "";
    p.append(el("strong", "", `Last decision: ${d.action}`));
    p.append(document.createTextNode(
      ` in stage ${Number(d.stage) + 1} (now ${percentText(d.percent)}) by ${d.actor}, ${when}: ${d.reason}`));
    article.append(p);
  }
  return article;
}

function renderRollouts(view) {
  const list = Array.isArray(view && view.rollouts) ? view.rollouts : [];
  $("rollout-list").replaceChildren(...list.map(renderRollout));
  $("rollouts").hidden = list.length === 0;
}

async function loadRollouts() {
  try {
    const res = await api("GET", "/api/rollouts");
    if (res.ok) renderRollouts(await res.json());
  } catch (_) { /* the next `rollout` event or `hello` brings it */ }
}

// The flags as this user sees them, read through OFREP bulk evaluation (the call any
// OpenFeature web provider makes): the context is the user, and `If-None-Match` with the last
// ETag makes an unchanged answer a bodiless 304. `flags` events on the stream say when to read
// again. When OFREP is closed to the page (WELCOMEDLY_OFREP_TOKEN set), GET /api/flags.
// Resolves to whether the flags changed since the last read.
let flags = {};
let flagsEtag = null;

async function loadFlags() {
  const headers = { accept: "application/json", "content-type": "application/json" };
  if (flagsEtag) headers["if-none-match"] = flagsEtag;
  const res = await fetch("/ofrep/v1/evaluate/flags", {
    method: "POST",
    headers,
    body: JSON.stringify({ context: { targetingKey: me } }),
  });
  if (res.status === 304) return false;
  if (res.status === 401 || res.status === 403) {
    const fallback = await api("GET", "/api/flags");
    if (!fallback.ok) return false;
    flags = (await fallback.json()).flags || {};
    return true;
  }
  if (!res.ok) return false;
  const body = await res.json();
  const next = {};
  // Failed evaluations (an errorCode) are left out: the page keeps its defaults for them.
  for (const f of body.flags || []) {
    if (!f.errorCode) next[f.key] = { value: f.value, variant: f.variant, reason: f.reason };
  }
  flags = next;
  flagsEtag = res.headers.get("etag");
  return true;
}

// What the flags change on the page: the theme, and the supervisor's statistics.
async function applyFlags() {
  document.body.classList.toggle(
    "dark",
    Boolean(flags["board-theme"] && flags["board-theme"].value === "dark"),
  );
  if (me === "supervisor") {
    statsOn = Boolean(flags["campaign-stats"] && flags["campaign-stats"].value === true);
    await loadStats();
  }
}

// A `flags` event: a flag changed on some instance; read them again, re-render if this user's
// changed.
async function refreshFlags() {
  try {
    if (await loadFlags()) await applyFlags();
  } catch (_) { /* the next event or login reads them again */ }
}

// The campaigns, newest first, a page at a time: `after` is the server's `next` cursor of the
// page already shown (absent: start over with the first page).
let campaignsNext = null;

async function loadCampaigns(after) {
  const query = after ? `?after=${encodeURIComponent(after)}` : "";
  const res = await api("GET", `/api/campaigns${query}`);
  const list = $("campaigns");
  if (!after) list.replaceChildren();
  if (!res.ok) {
    $("campaign-error").textContent = await problem(res);
    return;
  }
  const body = await res.json();
  for (const c of body.campaigns) {
    const li = document.createElement("li");
    li.textContent = `${c.name} (${c.status})`;
    li.dataset.campaign = String(c.id);
    list.append(li);
  }
  if (!after && body.campaigns.length === 0) {
    const li = document.createElement("li");
    li.textContent = "no campaign yet";
    list.append(li);
  }
  campaignsNext = body.next || null;
  $("campaigns-more").hidden = campaignsNext === null;
}

// The flag-gated statistics: shown only when `campaign-stats` is on for this user (the server
// answers 404 otherwise, whatever the page asks).
async function loadStats() {
  $("stats").hidden = true;
  if (!statsOn) return;
  const res = await api("GET", "/api/stats");
  if (!res.ok) return;
  const body = await res.json();
  const parts = Object.entries(body.by_status).map(([status, n]) => `${n} ${status}`);
  const noun = body.campaigns === 1 ? "campaign" : "campaigns";
  $("stats-detail").textContent =
    `${body.campaigns} ${noun}` + (parts.length ? `: ${parts.join(", ")}` : "");
  $("stats").hidden = false;
}

async function showApp(user) {
  me = user;
  $("me").textContent = user;
  $("login").hidden = true;
  $("app").hidden = false;
  $("me-title").focus();
  try {
    flagsEtag = null;
    await loadFlags();
    document.body.classList.toggle(
      "dark",
      Boolean(flags["board-theme"] && flags["board-theme"].value === "dark"),
    );
    await loadAgents();
    if (me !== user) return; // logged out meanwhile
    openStream();
    $("supervisor").hidden = user !== "supervisor";
    if (user === "supervisor") {
      await loadCampaigns();
      await applyFlags();
    }
  } catch (_) {
    showLogin();
    $("login-error").textContent = "The service cannot be reached: log in again in a moment.";
  }
}

function showLogin() {
  me = null;
  closeStream();
  clearTimeout(statusTimer);
  $("app").hidden = true;
  $("login").hidden = false;
  $("username").focus();
}

async function onLogin(event) {
  event.preventDefault();
  const error = $("login-error");
  error.textContent = "";
  const username = $("username").value.trim();
  const password = $("password").value;
  if (!username || !password) {
    error.textContent = "Enter a user name and a password.";
    return;
  }
  $("login-button").disabled = true;
  try {
    const res = await api("POST", "/auth/login", { username, password });
    if (!res.ok) {
      error.textContent = await problem(res);
      return;
    }
    $("password").value = "";
    const body = await res.json();
    await showApp(body.user);
  } catch (_) {
    error.textContent = "The service cannot be reached: retry in a moment.";
  } finally {
    $("login-button").disabled = false;
  }
}

// Arrow keys move through the radio group one state at a time: only the state the user
// settles on (250 ms) is sent, not every one passed on the way.
function onStatus(event) {
  if (event.target.name !== "status") return;
  clearTimeout(statusTimer);
  const status = event.target.value;
  statusTimer = setTimeout(() => sendStatus(status), 250);
}

async function sendStatus(status) {
  const error = $("status-error");
  error.textContent = "";
  const restore = () => {
    const mine = board.get(me);
    checkOwnStatus(mine ? mine.status : "offline");
  };
  try {
    const res = await api("PUT", "/api/agents/me/status", { status });
    if (res.status === 401) return showLogin();
    if (!res.ok) {
      error.textContent = await problem(res);
      restore();
      return;
    }
    const change = await res.json();
    applyChange(change, change.seq, false);
  } catch (_) {
    error.textContent = "The service cannot be reached: your status was not changed.";
    restore();
  }
}

async function onCampaign(event) {
  event.preventDefault();
  const error = $("campaign-error");
  error.textContent = "";
  const name = $("campaign-name").value.trim();
  if (!name) {
    error.textContent = "Name the campaign.";
    return;
  }
  try {
    const res = await api("POST", "/api/campaigns", { name });
    if (!res.ok) {
      error.textContent = await problem(res);
      return;
    }
    $("campaign-name").value = "";
    await loadCampaigns();
    await loadStats();
  } catch (_) {
    error.textContent = "The service cannot be reached: the campaign was not added.";
  }
}

async function onLogout() {
  await api("POST", "/auth/logout").catch(() => {});
  board.clear();
  $("agents").tBodies[0].replaceChildren();
  renderRollouts(null);
  showLogin();
}

async function start() {
  $("login-form").addEventListener("submit", onLogin);
  $("status-form").addEventListener("change", onStatus);
  $("campaign-form").addEventListener("submit", onCampaign);
  $("campaigns-more").addEventListener("click", () => {
    if (campaignsNext) loadCampaigns(campaignsNext).catch(() => {});
  });
  $("logout").addEventListener("click", onLogout);
  // Leaving the page ends its stream (and so the user's presence from this tab), even when the
  // browser keeps the page in its back/forward cache; coming back opens a new one.
  window.addEventListener("pagehide", () => {
    if (stream) stream.close();
  });
  window.addEventListener("pageshow", (e) => {
    if (e.persisted && me) openStream();
  });
  try {
    const res = await api("GET", "/api/me");
    if (res.ok) {
      const body = await res.json();
      await showApp(body.user);
      return;
    }
  } catch (_) { /* not reachable: show the form, its error says so on submit */ }
  showLogin();
}

document.addEventListener("DOMContentLoaded", start);
