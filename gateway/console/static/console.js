// Interlace console: live parts and actions. Every state change is a JSON POST carrying the page's
// CSRF token (X-CSRF-Token); nothing here stores credentials.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

async function post(url, body) {
  const resp = await fetch(url, {
    method: "POST",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf()},
    body: JSON.stringify(body || {}),
    credentials: "same-origin",
  });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error((data.error && data.error.message) || `HTTP ${resp.status}`);
  return data;
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

// Buttons with data-action: POST, show the outcome next to them.
document.addEventListener("click", async (ev) => {
  const button = ev.target.closest("button[data-action]");
  if (!button) return;
  ev.preventDefault();
  if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
  const out = button.parentElement.querySelector(".result") || button;
  button.disabled = true;
  try {
    const data = await post(button.dataset.action, button.dataset.body ? JSON.parse(button.dataset.body) : {});
    out.textContent = data.state || (data.revoked ? "revoked" : data.repinned ? `re-pinned ${data.repinned.join(", ")}` : "done");
  } catch (err) {
    out.textContent = err.message;
    button.disabled = false;
  }
});

// A task's events as they happen (SSE), its state, and the streamed artifact text.
function followTask(list) {
  if (list.dataset.done) return;
  const url = list.dataset.stream + (list.dataset.after ? `?after=${encodeURIComponent(list.dataset.after)}` : "");
  const source = new EventSource(url);
  source.onmessage = (msg) => {
    const e = JSON.parse(msg.data);
    list.appendChild(el("li", `${e.kind} ${e.state || e.artifact || ""} ${e.text || ""}`));
    if (e.state) {
      const state = document.getElementById("task-state");
      if (state) { state.textContent = e.state; state.className = `state-${e.state}`; }
      const form = document.getElementById("continue");
      if (form) form.hidden = !["input-required", "auth-required"].includes(e.state);
    }
    if (e.final) { source.close(); setTimeout(() => location.reload(), 300); }
  };
  source.onerror = () => source.close();
}

// The task list, refreshed every 3 s with the same filters.
function liveTasks(table) {
  const refresh = async () => {
    const resp = await fetch(table.dataset.live + location.search, {credentials: "same-origin"});
    if (!resp.ok) return;
    const {tasks} = await resp.json();
    const body = table.tBodies[0];
    body.replaceChildren(...tasks.map((t) => {
      const tr = el("tr", undefined, `state-${t.state}`);
      const link = el("a", t.id.slice(0, 12));
      link.href = `/ui/tasks/${t.id}`;
      const first = el("td");
      first.appendChild(link);
      tr.append(first, el("td", t.state), el("td", t.agent), el("td", t.owner), el("td", t.created), el("td", t.note));
      return tr;
    }));
  };
  setInterval(refresh, 3000);
}

// The playground: send, then stream the answer from the task's events.
function playground(form) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const error = document.getElementById("pg-error");
    error.hidden = true;
    const body = {agent: form.agent.value, text: form.text.value, data: form.data.value};
    const file = form.file.files[0];
    if (file) {
      const bytes = new Uint8Array(await file.arrayBuffer());
      let binary = "";
      for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      body.file = {name: file.name, type: file.type, bytes: btoa(binary)};
    }
    let task;
    try {
      task = await post("/ui/playground", body);
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
      return;
    }
    const answer = document.getElementById("pg-answer");
    const stream = document.getElementById("pg-stream");
    const link = document.getElementById("pg-task");
    answer.hidden = false;
    stream.textContent = "";
    link.textContent = task.id.slice(0, 12);
    link.href = task.url;
    const source = new EventSource(`/ui/tasks/${task.id}/events`);
    source.onmessage = (msg) => {
      const e = JSON.parse(msg.data);
      if (e.kind === "artifact-update") stream.textContent = (e.append ? stream.textContent : "") + e.text;
      if (e.state) document.getElementById("pg-state").textContent = e.state;
      if (e.final) source.close();
    };
  });
}

function continueForm(form) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    await post(`/ui/tasks/${form.dataset.task}/continue`, {text: form.text.value});
    location.reload();
  });
}

// Metrics: three small SVG line charts from the sampled history, redrawn every 5 s.
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];

function chart(svg, series) {
  svg.replaceChildren();
  const all = series.flatMap((s) => s.values.filter((v) => v !== null));
  const max = Math.max(1e-9, ...all);
  const n = Math.max(2, ...series.map((s) => s.values.length));
  series.forEach((s, i) => {
    const points = s.values.map((v, j) => v === null ? null : `${(j / (n - 1)) * 590 + 5},${150 - (v / max) * 140}`).filter(Boolean);
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", COLORS[i % COLORS.length]);
    line.setAttribute("stroke-width", "2");
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = s.name;
    line.appendChild(title);
    svg.appendChild(line);
  });
  const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
  label.setAttribute("x", "5"); label.setAttribute("y", "12");
  label.textContent = `max ${max.toFixed(2)}`;
  svg.appendChild(label);
}

function metrics(box) {
  const draw = async () => {
    const resp = await fetch(box.dataset.source, {credentials: "same-origin"});
    if (!resp.ok) return;
    const {points} = await resp.json();
    const agents = [...new Set(points.flatMap((p) => Object.keys(p.agents)))].sort();
    const of = (key) => agents.map((a) => ({name: a, values: points.map((p) => (p.agents[a] || {})[key] ?? null)}));
    chart(document.getElementById("chart-rate"), of("rate"));
    chart(document.getElementById("chart-latency"), [...of("p50_ms"), ...of("p99_ms").map((s) => ({...s, name: `${s.name} p99`}))]);
    chart(document.getElementById("chart-depth"), of("depth"));
    const last = points.length ? points[points.length - 1].agents : {};
    document.querySelector("#latest tbody").replaceChildren(...agents.map((a) => {
      const v = last[a] || {};
      const tr = el("tr");
      tr.dataset.agent = a;
      tr.append(el("td", a), el("td", v.rate ?? "–"), el("td", v.p50_ms ?? "–"), el("td", v.p99_ms ?? "–"), el("td", v.depth ?? "–"));
      return tr;
    }));
  };
  draw();
  setInterval(draw, 5000);
}

document.addEventListener("DOMContentLoaded", () => {
  const events = document.getElementById("events");
  if (events) followTask(events);
  const tasks = document.getElementById("tasks");
  if (tasks && tasks.dataset.live) liveTasks(tasks);
  const pg = document.getElementById("playground");
  if (pg) playground(pg);
  const cont = document.getElementById("continue");
  if (cont) continueForm(cont);
  const charts = document.getElementById("charts");
  if (charts) metrics(charts);
});
