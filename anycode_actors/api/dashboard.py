"""The web dashboard served at / when the API is on: one HTML page with a small inline script.

No build step and no dependencies: the page is HTML and CSS (one column on a phone, two side by
side from 900 px), and the script talks to the same /v1 routes as every other client. It shows
the sessions with status and owner, a form to start a task, the live output of the selected
session (an `EventSource` on its events: text as it streams, `▸` lines for tool calls, the
pending permissions as buttons, the agent's files), and the actor tree.

The token is asked for once and kept in `sessionStorage` (gone when the tab closes, never sent
anywhere by itself); the script sends it as `Authorization: Bearer` on every request. Because an
`EventSource` cannot set headers, the page also sets it as the `anycode_token` cookie
(`SameSite=Strict`, path /v1, `Secure` over https, no expiry so it ends with the browser
session), which the server accepts for GET requests only: a request that changes something
needs the header, which another site cannot make the browser send.
"""

from __future__ import annotations

from typing import Final

DASHBOARD_HTML: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>anycode</title>
<style>
  :root { color-scheme: light dark; --line: #8884; --accent: #2a7de1; }
  * { box-sizing: border-box; }
  [hidden] { display: none !important; }
  body { margin: 0; font: 15px/1.4 system-ui, sans-serif; }
  header { display: flex; gap: .5rem; align-items: center; padding: .6rem 1rem;
           border-bottom: 1px solid var(--line); flex-wrap: wrap; }
  header h1 { font-size: 1.1rem; margin: 0 auto 0 0; }
  main { display: grid; grid-template-columns: 1fr; gap: 1rem; padding: 1rem; }
  @media (min-width: 900px) { main { grid-template-columns: minmax(320px, 1fr) 2fr; } }
  section { border: 1px solid var(--line); border-radius: 8px; padding: .8rem; min-width: 0; }
  h2 { font-size: 1rem; margin: 0 0 .5rem; }
  input, textarea, select, button { font: inherit; padding: .45rem .6rem; border-radius: 6px;
           border: 1px solid var(--line); max-width: 100%; }
  textarea { width: 100%; min-height: 4.5rem; }
  button { cursor: pointer; background: var(--accent); color: #fff; border: none; }
  button.secondary { background: transparent; color: inherit; border: 1px solid var(--line); }
  table { width: 100%; border-collapse: collapse; }
  td, th { text-align: left; padding: .35rem .3rem; border-bottom: 1px solid var(--line);
           vertical-align: top; }
  tr.session { cursor: pointer; }
  tr.session:hover, tr.selected { background: #8882; }
  .status { font-weight: 600; }
  pre { white-space: pre-wrap; word-break: break-word; margin: 0; max-height: 60vh;
        overflow: auto; background: #8881; padding: .6rem; border-radius: 6px; }
  .row { display: flex; gap: .5rem; flex-wrap: wrap; margin: .4rem 0; }
  .permission { border: 1px solid var(--accent); border-radius: 6px; padding: .5rem;
                margin: .5rem 0; }
  .muted { opacity: .7; font-size: .9em; }
  #tree { font-family: ui-monospace, monospace; font-size: .85em; }
</style>
</head>
<body>
<header>
  <h1>anycode</h1>
  <form id="token-form" class="row">
    <input id="token" type="password" placeholder="API token" autocomplete="off">
    <button id="save-token" type="submit">Sign in</button>
  </form>
  <span id="who" class="muted"></span>
</header>
<main>
  <div>
    <section>
      <h2>Start a task</h2>
      <form id="task-form">
        <textarea id="prompt" placeholder="What should the agent do?" required></textarea>
        <div class="row">
          <input id="agent" placeholder="agent (default)">
          <input id="repo" placeholder="owner/repo (optional)">
          <button id="start" type="submit">Start</button>
        </div>
        <div id="task-error" class="muted"></div>
      </form>
    </section>
    <section>
      <h2>Sessions</h2>
      <table><thead><tr><th>id</th><th>status</th><th>owner</th><th>prompt</th></tr></thead>
      <tbody id="sessions"></tbody></table>
    </section>
    <section>
      <h2>Actor tree</h2>
      <div id="tree" class="muted">sign in to see it</div>
    </section>
  </div>
  <section id="view">
    <h2>Session <span id="view-id"></span> <span id="status" class="status"></span></h2>
    <div class="row">
      <button id="cancel" class="secondary" type="button" hidden>Cancel</button>
    </div>
    <pre id="output"></pre>
    <div id="permissions"></div>
    <div id="files"></div>
    <form id="follow-form" class="row" hidden>
      <input id="follow" placeholder="Reply to the agent" style="flex: 1">
      <button type="submit">Send</button>
    </form>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("anycode_token") || "";
let current = null, source = null, seenTools = new Set();

function setCookie(value) {
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = "anycode_token=" + encodeURIComponent(value) +
    "; path=/v1; SameSite=Strict" + secure;
}
async function api(method, path, body) {
  const options = { method, headers: { "Authorization": "Bearer " + token } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error((data && data.error) || response.statusText);
  return data;
}
function text(tag, content, cls) {
  const node = document.createElement(tag);
  node.textContent = content;
  if (cls) node.className = cls;
  return node;
}
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("anycode_token", token);
  setCookie(token);
  $("token").value = "";
  refresh();
});
$("task-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("task-error").textContent = "";
  const body = { prompt: $("prompt").value };
  if ($("agent").value.trim()) body.agent = $("agent").value.trim();
  if ($("repo").value.trim()) body.repo = $("repo").value.trim();
  try {
    const session = await api("POST", "/v1/sessions", body);
    $("prompt").value = "";
    await listSessions();
    open_(session.id);
  } catch (error) { $("task-error").textContent = error.message; }
});
$("cancel").addEventListener("click", async () => {
  if (current) { try { await api("DELETE", "/v1/sessions/" + current); } catch (e) {} }
});
$("follow-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const value = $("follow").value.trim();
  if (!value || !current) return;
  $("follow").value = "";
  try { await api("POST", "/v1/sessions/" + current + "/messages", { text: value }); }
  catch (error) { $("output").append(text("div", "⚠ " + error.message, "muted")); }
});
async function listSessions() {
  const { sessions } = await api("GET", "/v1/sessions");
  const rows = sessions.map((s) => {
    const row = document.createElement("tr");
    row.className = "session" + (s.id === current ? " selected" : "");
    row.dataset.id = s.id;
    row.append(text("td", s.id.slice(0, 8)), text("td", s.status, "status"),
               text("td", s.owner), text("td", s.prompt.slice(0, 80)));
    row.addEventListener("click", () => open_(s.id));
    return row;
  });
  $("sessions").replaceChildren(...rows);
}
async function showTree() {
  const snapshot = await api("GET", "/v1/tree");
  const lines = snapshot.entries.map((e) => {
    const depth = e.path.split("/").length - 1;
    const inbox = e.inbox_capacity ? "  inbox " + e.inbox_depth + "/" + e.inbox_capacity : "";
    return "  ".repeat(depth) + e.path.split("/").pop() + "  [" + e.kind + "] " + e.state +
      (e.restarts ? "  restarts " + e.restarts : "") + inbox;
  });
  $("tree").replaceChildren(text("pre", lines.join("\\n")));
}
function open_(id) {
  if (source) source.close();
  current = id; seenTools = new Set();
  $("view-id").textContent = id.slice(0, 8);
  $("output").textContent = "";
  $("permissions").replaceChildren(); $("files").replaceChildren();
  $("cancel").hidden = false; $("follow-form").hidden = false;
  for (const row of document.querySelectorAll("tr.session"))
    row.classList.toggle("selected", row.dataset.id === id);
  source = new EventSource("/v1/sessions/" + id + "/events");
  const append = (value) => {
    const out = $("output");
    const atEnd = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
    out.append(value);
    if (atEnd) out.scrollTop = out.scrollHeight;
  };
  source.addEventListener("text_delta", (e) => append(JSON.parse(e.data).data.text));
  source.addEventListener("tool_call", (e) => {
    const d = JSON.parse(e.data).data;
    if (d.title && !seenTools.has(d.tool_call_id)) {
      seenTools.add(d.tool_call_id);
      append("\\n▸ " + d.title + "\\n");
    }
  });
  source.addEventListener("turn_ended", () => append("\\n"));
  source.addEventListener("error", () => {});
  source.addEventListener("state", (e) => showState(id, JSON.parse(e.data)));
  source.addEventListener("end", (e) => {
    showState(id, JSON.parse(e.data));
    source.close();
    $("cancel").hidden = true; $("follow-form").hidden = true;
    listSessions().catch(() => {});
  });
}
function showState(id, state) {
  $("status").textContent = state.status + (state.reason ? " — " + state.reason : "");
  const prompts = state.pending.map((p) => {
    const box = document.createElement("div");
    box.className = "permission";
    box.append(text("div", "Permission requested: " + (p.title || "a tool call")));
    if (p.input) box.append(text("div", p.input, "muted"));
    const row = document.createElement("div");
    row.className = "row";
    for (const option of p.options) {
      const button = text("button", option.name);
      button.type = "button";
      button.dataset.kind = option.kind;
      if (option.kind.startsWith("reject")) button.className = "secondary";
      button.addEventListener("click", async () => {
        box.querySelectorAll("button").forEach((b) => b.disabled = true);
        try {
          await api("POST", "/v1/sessions/" + id + "/permissions/" + p.id,
                    { option: option.index });
          box.replaceChildren(text("div", option.name + " ✓", "muted"));
        } catch (error) { box.append(text("div", "⚠ " + error.message, "muted")); }
      });
      row.append(button);
    }
    box.append(row);
    return box;
  });
  $("permissions").replaceChildren(...prompts);
  const files = state.files.map((f) => {
    const box = document.createElement("div");
    const link = text("a", "📎 " + f.name + " (" + f.size + " bytes)");
    link.href = "#"; link.className = "file";
    const preview = text("pre", "");
    link.addEventListener("click", async (event) => {
      event.preventDefault();
      const response = await fetch("/v1/sessions/" + id + "/files/" + encodeURIComponent(f.name),
        { headers: { "Authorization": "Bearer " + token } });
      preview.textContent = await response.text();
    });
    box.append(link, preview);
    return box;
  });
  $("files").replaceChildren(...files);
}
async function refresh() {
  if (!token) return;
  setCookie(token);
  try {
    await listSessions();
    $("who").textContent = "signed in";
    $("token-form").hidden = true;
    await showTree();
  } catch (error) { $("who").textContent = error.message; }
}
refresh();
setInterval(() => { if (token) listSessions().catch(() => {}); }, 3000);
setInterval(() => { if (token) showTree().catch(() => {}); }, 5000);
</script>
</body>
</html>
"""
