// The ops dashboard: a static page over the gateway's REST API (no build step).
// Every value is inserted as text (never as HTML). The key lives in sessionStorage
// and travels as `Authorization: Bearer`. Whether the key may act is asked of the
// services themselves: an operator-only read (GET /api/v1/queue/workers) that
// answers 200 shows the action buttons; the services refuse actions anyway.
"use strict";

const KEY = "verifier.apiKey";
const FINISHED = new Set(["completed", "failed", "cancelled"]);
let canOperate = false;
let stopLive = null;

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "onclick") node.addEventListener("click", value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(node, ...children) {
  // replaceChildren() would print a null child as the text "null".
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

function headers(extra) {
  const out = Object.assign({ Accept: "application/json" }, extra || {});
  const key = sessionStorage.getItem(KEY);
  if (key) out.Authorization = "Bearer " + key;
  return out;
}

async function api(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  const text = await response.text();
  const data = text ? JSON.parse(text) : {};
  if (!response.ok) {
    if (response.status === 401) signOut();
    const error = new Error(data.message || response.status + " " + response.statusText);
    error.status = response.status;
    throw error;
  }
  return data;
}

function showError(error) {
  const box = document.getElementById("error");
  box.textContent = error ? String(error.message || error) : "";
  box.style.display = error ? "block" : "none";
}

function status(value) {
  return h("span", { class: "s-" + (value || "") }, value || "—");
}

function when(value) {
  return value ? new Date(value).toISOString().replace("T", " ").slice(0, 19) + "Z" : "—";
}

function action(label, run) {
  if (!canOperate) return null;
  return h("button", {
    class: "act",
    "data-action": label,
    onclick: async (event) => {
      event.target.disabled = true;
      try { await run(); showError(null); route(); } catch (e) { showError(e); }
      finally { event.target.disabled = false; }
    },
  }, label);
}

function table(columns, rows) {
  return h("table", {},
    h("tr", {}, columns.map((c) => h("th", {}, c))),
    rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c)))));
}

// --- views --------------------------------------------------------------------------------

async function overview(view) {
  const [stats, queue] = await Promise.all([
    api("GET", "/api/v1/tasks/stats/summary"),
    api("GET", "/api/v1/queue/status").then((r) => r.status || {}),
  ]);
  const names = ["pending", "queued", "active", "completed", "failed", "cancelled"];
  view.append(
    h("h2", {}, "Tasks by state"),
    h("div", { class: "cards", id: "counts" },
      names.map((n) => h("div", { class: "card", "data-state": n }, h("b", {}, stats[n] || 0), n))),
    h("h2", {}, "Queue"),
    h("div", { class: "cards" },
      ["waiting", "active", "delayed", "completed", "failed"].map((n) =>
        h("div", { class: "card" }, h("b", {}, queue[n] || 0), n)),
      h("div", { class: "card" }, h("b", {}, queue.paused ? "paused" : "running"), queue.backend || ""),
      h("div", { class: "card" }, h("b", {}, queue.workersOnline || 0), "workers online")),
    h("p", {},
      queue.paused ? action("Resume queue", () => api("POST", "/api/v1/queue/resume", {}))
                   : action("Pause queue", () => api("POST", "/api/v1/queue/pause", {}))),
    h("h2", {}, "Last hour"),
    h("p", { class: "muted" }, "Tasks finished per 5 minutes and the share that failed, " +
      "counted by the tasks service (GET /api/v1/tasks/stats/summary per window)."),
    await hourCharts());
}

async function hourCharts() {
  const now = Date.now();
  const step = 5 * 60 * 1000;
  const windows = Array.from({ length: 12 }, (_, i) => [now - (12 - i) * step, now - (11 - i) * step]);
  const results = await Promise.all(windows.map(([a, b]) => api("GET",
    "/api/v1/tasks/stats/summary?createdAfter=" + new Date(a).toISOString() +
    "&createdBefore=" + new Date(b).toISOString())));
  const done = results.map((r) => Number(r.completed || 0) + Number(r.failed || 0));
  const failed = results.map((r) => Number(r.failed || 0));
  const top = Math.max(1, ...done);
  const svg = (title, values, max, color, label) => {
    const ns = "http://www.w3.org/2000/svg";
    const root = document.createElementNS(ns, "svg");
    root.setAttribute("width", "480"); root.setAttribute("height", "140");
    root.setAttribute("role", "img"); root.setAttribute("aria-label", title);
    values.forEach((v, i) => {
      const bar = document.createElementNS(ns, "rect");
      const height = max ? Math.round((v / max) * 100) : 0;
      bar.setAttribute("x", String(10 + i * 38)); bar.setAttribute("y", String(115 - height));
      bar.setAttribute("width", "30"); bar.setAttribute("height", String(height));
      bar.setAttribute("fill", color);
      const tip = document.createElementNS(ns, "title"); tip.textContent = label(v);
      bar.append(tip); root.append(bar);
    });
    const caption = document.createElementNS(ns, "text");
    caption.setAttribute("x", "10"); caption.setAttribute("y", "135"); caption.textContent = title;
    root.append(caption);
    return root;
  };
  const rates = done.map((d, i) => (d ? failed[i] / d : 0));
  return h("div", { class: "cards", id: "charts" },
    svg("throughput (finished / 5 min)", done, top, "#2a62d6", (v) => v + " finished"),
    svg("failure rate", rates, 1, "#c0262d", (v) => Math.round(v * 100) + "% failed"));
}

async function tasks(view) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const form = h("form", { class: "inline", id: "filters" },
    h("select", { name: "status" }, ["", "pending", "queued", "active", "completed", "failed", "cancelled"]
      .map((s) => h("option", { value: s, selected: params.get("status") === s }, s || "any status"))),
    h("input", { name: "appId", placeholder: "app id", value: params.get("appId") || "" }),
    h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) query.set(k, v);
    location.hash = "tasks?" + query;
  });
  const find = h("form", { class: "inline", id: "find" },
    h("input", { name: "id", placeholder: "task id", size: 38, required: true }),
    h("button", { type: "submit" }, "Find"));
  find.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = "task/" + new FormData(find).get("id").trim();
  });
  const holder = h("div", { id: "task-list" });
  view.append(h("h2", {}, "Tasks"), find, form, holder,
    h("p", { class: "muted" }, "Refreshed every 2 s."));
  const query = new URLSearchParams({ pageSize: "50" });
  for (const [k, v] of params) if (v) query.set(k, v);
  const draw = async () => {
    const page = await api("GET", "/api/v1/tasks?" + query);
    holder.replaceChildren(table(["id", "app", "type", "status", "verdict", "attempts", "created"],
      (page.tasks || []).map((t) => [
        h("a", { href: "#task/" + t.id }, t.id), t.appName || t.appId || "—", t.appConfigType,
        status(t.status), status(t.verdict), t.attempts || 0, when(t.createdAt)])));
  };
  await draw();
  const timer = setInterval(() => draw().catch(showError), 2000);
  stopLive = () => clearInterval(timer);
}

async function readEvents(path, onData, signal) {
  // Server-sent events over fetch (EventSource cannot send the Authorization header).
  let lastId = "";
  for (let round = 0; round < 5 && !signal.aborted; round++) {
    const extra = { Accept: "text/event-stream" };
    if (lastId) extra["Last-Event-ID"] = lastId;
    let response;
    try { response = await fetch(path, { headers: headers(extra), signal }); } catch (e) { return; }
    if (!response.ok) throw new Error("watch: " + response.status);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      let chunk;
      try { chunk = await reader.read(); } catch (e) { break; }
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        let event = "message"; let data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) event = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
          else if (line.startsWith("id: ")) lastId = line.slice(4);
        }
        if (event === "end") return;
        if (event === "message" && data) onData(JSON.parse(data));
      }
    }
  }
}

async function taskDetail(view, id) {
  const [task, events, key] = await Promise.all([
    api("GET", "/api/v1/tasks/" + encodeURIComponent(id)),
    api("GET", "/api/v1/tasks/" + encodeURIComponent(id) + "/events"),
    api("GET", "/api/v1/verifier/signing-key").catch(() => ({})),
  ]);
  const head = h("div", { id: "task-head" });
  const drawHead = (t) => fill(head,
    h("h2", {}, "Task ", h("code", {}, t.id)),
    h("div", { class: "cards" },
      h("div", { class: "card" }, h("b", { id: "task-status" }, status(t.status)), "status"),
      h("div", { class: "card" }, h("b", {}, status(t.verdict)), "verdict"),
      h("div", { class: "card" }, h("b", {}, t.progress || 0), "progress"),
      h("div", { class: "card" }, h("b", {}, t.attempts || 0), "attempts"),
      h("div", { class: "card" }, h("b", {}, t.createdBy || "api"), "created by")),
    t.errorMessage ? h("p", { class: "s-failed" }, t.errorMessage) : null,
    h("p", {},
      FINISHED.has(t.status) ? null
        : action("Cancel", () => api("DELETE", "/api/v1/tasks/" + t.id)),
      t.status === "failed" || t.status === "cancelled"
        ? action("Retry", () => api("POST", "/api/v1/tasks/" + t.id + ":retry", {})) : null),
    h("h3", {}, "Checks"),
    table(["check", "status", "reason"],
      (t.checkResults || []).map((c) => [c.check, status(c.status), c.reason || ""])));
  drawHead(task);
  const trail = h("div", { id: "events" });
  const drawEvents = (list) => trail.replaceChildren(table(["#", "type", "from", "to", "message", "at"],
    list.map((e) => [e.id, e.type, e.fromStatus || "", status(e.toStatus), e.message || "", when(e.createdAt)])));
  drawEvents(events.events || []);
  const report = h("div", { id: "report" });
  view.append(head, h("h3", {}, "Event history"), trail, h("h3", {}, "Report"), report);
  const drawReport = async (t) => {
    if (!t.s3Key) { report.replaceChildren(h("p", { class: "muted" }, "No report yet.")); return; }
    const r = await api("GET", "/api/v1/tasks/" + t.id + "/report");
    const base = location.origin;
    const snippet = [
      "# Verify it yourself (Python, pip install cryptography):",
      "import json, urllib.request",
      "from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey",
      `report = json.load(urllib.request.urlopen("${base}/api/v1/tasks/${t.id}/report"))`,
      `key = Ed25519PublicKey.from_public_bytes(bytes.fromhex("${key.publicKey || "<public key>"}"))`,
      'key.verify(bytes.fromhex(report["signature"]), report["canonicalJson"].encode())',
      'print("signature valid; signed by key", report["keyId"])',
    ].join("\n");
    report.replaceChildren(
      h("p", {}, "Signed by key ", h("code", {}, r.keyId || "?"), "; public key (Ed25519) ",
        h("code", { id: "public-key" }, key.publicKey || "unavailable")),
      h("pre", { id: "snippet" }, snippet),
      h("details", {}, h("summary", {}, "Report JSON"), h("pre", {}, JSON.stringify(r.report, null, 2))));
  };
  await drawReport(task).catch(showError);
  if (FINISHED.has(task.status)) return;
  const controller = new AbortController();
  stopLive = () => controller.abort();
  readEvents("/api/v1/tasks/" + task.id + ":watch", async (message) => {
    drawHead(message.task);
    if (message.event) {
      const current = await api("GET", "/api/v1/tasks/" + task.id + "/events");
      drawEvents(current.events || []);
    }
    if (FINISHED.has(message.task.status)) await drawReport(message.task).catch(showError);
  }, controller.signal).catch(showError);
}

async function apps(view) {
  const page = await api("GET", "/api/v1/apps?pageSize=200");
  view.append(h("h2", {}, "Apps"), table(
    ["app", "type", "state", "latest task", "verdict", "finished", "next run", ""],
    (page.apps || []).map((a) => [
      h("span", {}, a.name || "—", h("br"), h("code", { class: "muted" }, a.id)),
      a.appConfigType, a.schedulePaused ? "paused" : a.state,
      a.latestTaskId ? h("a", { href: "#task/" + a.latestTaskId }, status(a.latestTaskStatus)) : "—",
      status(a.latestVerdict), when(a.latestFinishedAt), when(a.nextRunAt),
      h("span", {},
        a.schedulePaused
          ? action("Resume", () => api("POST", "/api/v1/apps/" + a.id + ":resumeSchedule", {}))
          : action("Pause", () => api("POST", "/api/v1/apps/" + a.id + ":pauseSchedule", {})),
        " ", action("Trigger", () => api("POST", "/api/v1/apps/" + a.id + ":triggerSchedule", {})))])));
}

async function workers(view) {
  const page = await api("GET", "/api/v1/queue/workers");
  view.append(h("h2", {}, "Workers"), table(
    ["worker", "host", "state", "last heartbeat", "jobs in hand", "processed"],
    (page.workers || []).map((w) => [h("code", {}, w.id), w.host + " (pid " + w.pid + ")",
      w.state, when(w.lastHeartbeatAt), (w.jobsInHand || []).length + " " +
      (w.jobsInHand || []).join(", "), w.processed || 0])));
}

async function deadLetters(view) {
  const page = await api("GET", "/api/v1/deadletters?pageSize=100");
  view.append(h("h2", {}, "Dead letters"),
    h("p", {}, action("Retry all failed", () => api("POST", "/api/v1/tasks:retryFailed", {}))),
    table(["task", "app", "attempts: last error of each"],
      (page.deadLetters || []).map((d) => [
        h("a", { href: "#task/" + d.task.id }, d.task.id), d.task.appName || d.task.appId || "—",
        h("ol", {}, (d.attempts || []).map((a) => h("li", {}, "attempt " + a.attempt + ": " + a.error)))])));
}

// --- shell ----------------------------------------------------------------------------------

function signOut() {
  sessionStorage.removeItem(KEY);
  canOperate = false;
  route();
}

async function route() {
  if (stopLive) { stopLive(); stopLive = null; }
  const signedIn = Boolean(sessionStorage.getItem(KEY));
  document.getElementById("login").hidden = signedIn;
  const view = document.getElementById("view");
  view.hidden = !signedIn;
  const who = document.getElementById("who");
  who.replaceChildren();
  if (!signedIn) return;
  who.append(canOperate ? "operator" : "read-only", " · ",
    h("button", { id: "sign-out", onclick: signOut }, "Sign out"));
  const [name, arg] = (location.hash.slice(1) || "overview").split("?")[0].split("/");
  for (const link of document.querySelectorAll("header a")) {
    link.classList.toggle("on", link.dataset.view === name || (name === "task" && link.dataset.view === "tasks"));
  }
  const views = { overview, tasks, apps, workers, deadletters: deadLetters };
  const fresh = h("main", { id: "view", "data-view": name });
  view.replaceWith(fresh);
  try {
    if (name === "task" && arg) await taskDetail(fresh, decodeURIComponent(arg));
    else await (views[name] || overview)(fresh);
    showError(null);
  } catch (e) {
    showError(e);
  }
  fresh.setAttribute("data-ready", "true");
}

async function probeScope() {
  // The services decide: an operator-only read tells whether this key may act.
  try { await api("GET", "/api/v1/queue/workers"); canOperate = true; }
  catch (e) { canOperate = false; }
}

document.getElementById("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, document.getElementById("key").value.trim());
  await probeScope();
  route();
});
window.addEventListener("hashchange", route);
(async () => { if (sessionStorage.getItem(KEY)) await probeScope(); route(); })();
