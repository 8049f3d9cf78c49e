// The Nexus dashboard: log in, upload a file for a model with its load
// options, watch every job live over the WebSocket, open a job to see why it
// ended, its throughput and its rejects grouped by kind. Plain JS, no build
// step.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = {
  access: null, refresh: null, user: null, jobs: new Map(), ws: null,
  // Progress samples per job, for the throughput chart: [ms, rows_committed].
  samples: new Map(),
  cursor: null, open: null, rejectsNext: null,
  // Bumped by each (re)load of the job page's rejects: a stale load adds nothing.
  rejectsLoad: 0,
};

function saveTokens(pair) {
  state.access = pair.access_token;
  state.refresh = pair.refresh_token;
  sessionStorage.setItem("nexus", JSON.stringify({ access: state.access, refresh: state.refresh, user: state.user }));
}

async function refreshTokens() {
  if (!state.refresh) return false;
  const r = await fetch("/api/v2/auth/refresh", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh_token: state.refresh }),
  });
  if (!r.ok) return false;
  saveTokens(await r.json());
  return true;
}

// fetch with the access token; one refresh and retry on 401.
async function api(path, options = {}, retried = false) {
  const headers = Object.assign({}, options.headers, { Authorization: "Bearer " + state.access });
  const r = await fetch(path, Object.assign({}, options, { headers }));
  if (r.status === 401 && !retried && await refreshTokens()) return api(path, options, true);
  if (r.status === 401) { showLogin(); throw new Error("logged out"); }
  return r;
}

function showLogin() {
  $("#login").hidden = false; $("#app").hidden = true; $("#logout").hidden = true; $("#who").textContent = "";
  if (state.ws) state.ws.close();
}

// The model picked last, else `customer`, else the first.
function pickModel(models) {
  const names = models.map((m) => m.name);
  const last = localStorage.getItem("nexus.model");
  return names.includes(last) ? last : names.includes("customer") ? "customer" : names[0];
}

async function showApp() {
  $("#login").hidden = true; $("#app").hidden = false; $("#logout").hidden = false;
  $("#who").textContent = state.user || "";
  const models = await (await api("/api/v2/models")).json();
  const options = models.map((m) => `<option value="${esc(m.name)}">${esc(m.name)}</option>`).join("");
  $("#model").innerHTML = options;
  $("#model").value = pickModel(models);
  $("#f-model").innerHTML = `<option value="">all</option>` + options;
  await loadJobs();
  connect();
  route();
}

function filters() {
  return { status: $("#f-status").value, model: $("#f-model").value, owner: $("#f-owner").value.trim() };
}

function matches(job) {
  const f = filters();
  return (!f.status || job.status === f.status) && (!f.model || job.model === f.model)
    && (!f.owner || job.owner === f.owner);
}

// The first page of jobs under the filters (or the next one, with `more`).
async function loadJobs(more = false) {
  const q = new URLSearchParams({ limit: "50" });
  for (const [k, v] of Object.entries(filters())) if (v) q.set(k, v);
  if (more && state.cursor) q.set("cursor", state.cursor);
  if (!more) { $("#jobs tbody").innerHTML = ""; }
  const r = await api("/api/v2/jobs?" + q);
  if (!r.ok) return;
  const page = await r.json();
  state.cursor = page.next_cursor;
  $("#more-jobs").hidden = !page.next_cursor;
  for (const j of page.jobs) upsertJob(j, { append: true });
}

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function fmtDuration(ms) {
  if (ms == null || ms < 0) return "";
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor(s % 3600 / 60)}m`;
}

const FINAL = ["succeeded", "failed", "cancelled", "skipped"];

// What a job's status says to a person: interrupted beats running.
function shownStatus(job) {
  return job.interrupted && job.status === "running" ? "interrupted" : job.status;
}

// Why a job ended the way it did, when it says.
function why(job) {
  if (job.status === "skipped") return "already loaded into this model (upload with “Load even if already loaded” to load it again)";
  if (job.interrupted && job.status === "running") return "its process is gone; it resumes when its load runs again";
  return job.error || "";
}

function duration(job) {
  if (FINAL.includes(job.status)) return job.duration_ms;
  return job.started_at ? Date.now() - Date.parse(job.started_at) : null;
}

function upsertJob(update, { append = false } = {}) {
  const id = update.job_id;
  const prev = state.jobs.get(id);
  const job = Object.assign({}, prev || {}, update);
  // Counters never go backwards, whatever order messages arrive in.
  if (prev) for (const k of ["rows_read", "rows_committed", "rows_rejected", "bytes_read"]) {
    if (update[k] != null && prev[k] != null) job[k] = Math.max(prev[k], update[k]);
  }
  // Progress comes from the process running the job: it is alive.
  if (update.type === "progress") job.interrupted = false;
  state.jobs.set(id, job);
  if (update.rows_committed != null && !FINAL.includes(job.status)) sample(id, job.rows_committed);
  if (state.open === id) renderJobPage(job);
  let row = document.querySelector(`tr[data-job="${id}"]`);
  if (!row && (!job.model || !matches(job))) return;
  if (!row) {
    row = document.createElement("tr");
    row.dataset.job = id;
    row.innerHTML = `<td class="file"><a></a><div class="why"></div></td><td class="model"></td><td class="status"></td>
      <td><div class="bar"><div></div></div></td><td class="num rate"></td><td class="num eta"></td>
      <td class="num duration"></td><td class="num committed"></td><td class="num rejected"></td><td class="actions"></td>`;
    if (append) $("#jobs tbody").append(row); else $("#jobs tbody").prepend(row);
  }
  const done = FINAL.includes(job.status);
  const pct = job.status === "succeeded" ? 100
    : job.bytes_total ? Math.min(100, Math.round(100 * (job.bytes_read || 0) / job.bytes_total)) : 0;
  const link = row.querySelector(".file a");
  link.textContent = job.file_name || id.slice(0, 8);
  link.href = `#/jobs/${id}`;
  const reason = why(job);
  const w = row.querySelector(".why");
  w.textContent = reason; w.title = reason;
  row.querySelector(".model").textContent = job.model || "";
  const shown = shownStatus(job);
  const st = row.querySelector(".status");
  st.textContent = shown; st.className = "status status-" + shown;
  const bar = row.querySelector(".bar");
  // A failed or cancelled job never looks complete: its bar stays where it stopped.
  bar.className = "bar bar-" + shown;
  bar.firstElementChild.style.width = pct + "%"; bar.dataset.pct = pct;
  row.querySelector(".rate").textContent = done ? "" : Math.round(job.rows_per_sec || 0).toLocaleString();
  row.querySelector(".eta").textContent = done ? "" : fmtDuration(job.eta_ms);
  row.querySelector(".duration").textContent = fmtDuration(duration(job));
  row.querySelector(".committed").textContent = (job.rows_committed || 0).toLocaleString();
  row.querySelector(".rejected").textContent = (job.rows_rejected || 0).toLocaleString();
  const actions = row.querySelector(".actions");
  actions.innerHTML = "";
  if (!done) {
    const b = document.createElement("button");
    b.className = "secondary cancel-btn"; b.textContent = "Cancel";
    b.onclick = () => api(`/api/v2/jobs/${id}/cancel`, { method: "POST" });
    actions.append(b);
  } else if (job.rows_rejected > 0) {
    const a = document.createElement("a");
    a.className = "rejects-link"; a.textContent = "Rejects";
    a.onclick = () => downloadRejects(id);
    actions.append(a);
  }
}

function sample(id, committed) {
  const list = state.samples.get(id) || [];
  const now = Date.now();
  const last = list[list.length - 1];
  if (!last || now - last[0] >= 200) list.push([now, committed]);
  if (list.length > 2000) list.shift();
  state.samples.set(id, list);
}

async function downloadRejects(id) {
  const blob = await (await api(`/api/v2/jobs/${id}/rejects`)).blob();
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = `rejects-${id}.csv`;
  document.body.append(a); a.click(); a.remove();
}

// ----- the job page -----

function route() {
  const m = location.hash.match(/^#\/jobs\/([0-9a-f-]{36})$/);
  if (m) openJob(m[1]); else closeJob();
}

function closeJob() {
  state.open = null;
  $("#job-page").hidden = true; $("#list").hidden = false;
}

async function openJob(id) {
  state.open = id;
  $("#list").hidden = true; $("#job-page").hidden = false;
  const r = await api(`/api/v2/jobs/${id}`);
  if (!r.ok) { $("#jp-title").textContent = "No such job"; return; }
  const job = await r.json();
  if (state.ws && state.ws.readyState === 1) state.ws.send(JSON.stringify({ type: "subscribe", job_id: id }));
  upsertJob(job);
  renderJobPage(state.jobs.get(id));
  await loadRejects(id);
}

function renderJobPage(job) {
  $("#jp-title").textContent = job.file_name || job.job_id;
  const shown = shownStatus(job);
  $("#jp-status").innerHTML = `<span class="status status-${esc(shown)}">${esc(shown)}</span>`;
  $("#jp-error").textContent = why(job);
  const rate = job.duration_ms > 0 ? Math.round(job.rows_read * 1000 / job.duration_ms) : null;
  const facts = [
    ["Job", job.job_id], ["Model", job.model], ["Table", job.target],
    ["Mode", job.mode + (job.atomic ? ", atomic" : "")], ["Owner", job.owner],
    ["Created", job.created_at && new Date(job.created_at).toLocaleString()],
    ["Started", job.started_at && new Date(job.started_at).toLocaleString()],
    ["Finished", job.finished_at && new Date(job.finished_at).toLocaleString()],
    ["Duration", fmtDuration(duration(job))],
    ["Rows", `${(job.rows_read || 0).toLocaleString()} read, ${(job.rows_committed || 0).toLocaleString()} committed, ${(job.rows_rejected || 0).toLocaleString()} rejected`],
    ["Rows/s", rate != null && FINAL.includes(job.status) ? rate.toLocaleString() : Math.round(job.rows_per_sec || 0).toLocaleString()],
    ["Bytes", job.bytes_total ? `${(job.bytes_read || 0).toLocaleString()} of ${job.bytes_total.toLocaleString()}` : ""],
  ];
  $("#jp-facts").innerHTML = facts.filter(([, v]) => v)
    .map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
  drawChart(state.samples.get(job.job_id) || []);
}

// Rows committed per second between successive samples, as a line.
function drawChart(samples) {
  const canvas = $("#jp-chart");
  const width = canvas.clientWidth || canvas.width;
  if (canvas.width !== width) canvas.width = width;
  const ctx = canvas.getContext("2d");
  const { height } = canvas;
  ctx.clearRect(0, 0, width, height);
  const points = [];
  for (let i = 1; i < samples.length; i++) {
    const [t0, r0] = samples[i - 1], [t1, r1] = samples[i];
    if (t1 > t0) points.push([t1, (r1 - r0) * 1000 / (t1 - t0)]);
  }
  canvas.dataset.points = points.length;
  ctx.strokeStyle = "#dde2ea"; ctx.beginPath(); ctx.moveTo(0, height - 0.5); ctx.lineTo(width, height - 0.5); ctx.stroke();
  if (points.length < 1) {
    ctx.fillStyle = "#6b7585"; ctx.font = "12px system-ui";
    ctx.fillText("samples appear while the job runs", 8, height / 2);
    return;
  }
  const t0 = points[0][0], t1 = points[points.length - 1][0] || t0 + 1;
  const max = Math.max(...points.map((p) => p[1]), 1);
  const x = (t) => points.length === 1 ? width / 2 : (t - t0) / (t1 - t0) * (width - 10) + 5;
  const y = (v) => height - 18 - v / max * (height - 30);
  ctx.strokeStyle = "#2f6fed"; ctx.lineWidth = 2; ctx.beginPath();
  points.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
  ctx.stroke();
  ctx.fillStyle = "#6b7585"; ctx.font = "12px system-ui";
  ctx.fillText(`peak ${Math.round(max).toLocaleString()} rows/s`, 8, 14);
}

async function loadRejects(id) {
  const load = ++state.rejectsLoad;
  const r = await api(`/api/v2/jobs/${id}/rejects/summary`);
  const groups = r.ok ? await r.json() : [];
  if (load !== state.rejectsLoad) return;
  $("#jp-groups tbody").innerHTML = ""; $("#jp-rejects tbody").innerHTML = "";
  $("#jp-no-rejects").hidden = groups.length > 0;
  $("#jp-rejects-block").hidden = groups.length === 0;
  $("#jp-groups tbody").innerHTML = groups.map((g) => `<tr class="group"><td class="num">${g.count.toLocaleString()}</td>
    <td>${esc(g.column)}</td><td class="reason">${esc(g.examples[0] ? g.examples[0].reason : g.kind)}</td>
    <td class="examples">${g.examples.map((e) => `line ${e.line}: <code>${esc(e.raw.slice(0, 80))}</code>`).join("<br>")}</td></tr>`).join("");
  state.rejectsNext = `/api/v2/jobs/${id}/rejects?limit=50`;
  await moreRejects();
}

async function moreRejects() {
  if (!state.rejectsNext) return;
  const load = state.rejectsLoad;
  const r = await api(state.rejectsNext, { headers: { Accept: "application/json" } });
  if (!r.ok) return;
  const rows = await r.json();
  if (load !== state.rejectsLoad) return;
  $("#jp-rejects tbody").insertAdjacentHTML("beforeend", rows.map((x) => `<tr><td class="num">${x.line}</td>
    <td>${esc(x.column)}</td><td class="reason">${esc(x.reason)}</td><td><code>${esc(x.raw.slice(0, 200))}</code></td></tr>`).join(""));
  const link = r.headers.get("Link") || "";
  const m = link.match(/<([^>]+)>;\s*rel="next"/);
  state.rejectsNext = m ? m[1] : null;
  $("#jp-more").hidden = !state.rejectsNext;
}

// ----- live updates -----

function connect() {
  if (state.ws) state.ws.onclose = null, state.ws.close();
  const proto = location.protocol === "https:" ? "wss" : "ws";
  // The token travels as a subprotocol, not in the URL (where logs keep it).
  const ws = new WebSocket(`${proto}://${location.host}/api/v2/ws`, ["nexus", `bearer.${state.access}`]);
  state.ws = ws;
  ws.onopen = () => { $("#live").classList.add("on"); ws.send(JSON.stringify({ type: "subscribe", all: true })); };
  ws.onmessage = async (e) => {
    const m = JSON.parse(e.data);
    if (m.type === "progress") upsertJob(m);
    else if (m.type === "job") {
      upsertJob(m);
      if (FINAL.includes(m.status) || !state.jobs.get(m.job_id).file_name) {
        const r = await api(`/api/v2/jobs/${m.job_id}`);
        if (r.ok) upsertJob(await r.json());
        if (state.open === m.job_id && FINAL.includes(m.status)) loadRejects(m.job_id);
      }
    }
  };
  ws.onclose = async (e) => {
    $("#live").classList.remove("on");
    if ($("#app").hidden) return;
    // 4401: the session ended (logged out elsewhere, revoked, user disabled).
    if (e.code === 4401) { sessionStorage.removeItem("nexus"); showLogin(); return; }
    await refreshTokens();
    setTimeout(connect, 1000);
  };
}

// ----- forms -----

$("#login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("#login-error").textContent = "";
  const r = await fetch("/api/v2/auth/login", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username: $("#username").value, password: $("#password").value }),
  });
  if (!r.ok) {
    const p = await r.json().catch(() => ({}));
    $("#login-error").textContent = p.detail || "login failed";
    return;
  }
  state.user = $("#username").value;
  saveTokens(await r.json());
  showApp();
});

$("#logout").addEventListener("click", async () => {
  await api("/api/v2/auth/logout", { method: "POST" }).catch(() => {});
  sessionStorage.removeItem("nexus");
  state.access = state.refresh = state.user = null;
  showLogin();
});

$("#model").addEventListener("change", () => localStorage.setItem("nexus.model", $("#model").value));
for (const id of ["#f-status", "#f-model"]) $(id).addEventListener("change", () => loadJobs());
$("#f-owner").addEventListener("change", () => loadJobs());
$("#filters").addEventListener("submit", (e) => { e.preventDefault(); loadJobs(); });
$("#more-jobs").addEventListener("click", () => loadJobs(true));
$("#jp-more").addEventListener("click", () => moreRejects());
$("#jp-download").addEventListener("click", () => state.open && downloadRejects(state.open));
window.addEventListener("hashchange", route);

// The query of an upload: the model, the mode and the options set.
function uploadQuery() {
  const q = new URLSearchParams({ model: $("#model").value, mode: $("#mode").value });
  const put = (k, v) => { if (v !== "" && v != null) q.set(k, v); };
  put("encoding", $("#opt-encoding").value);
  put("delimiter", $("#opt-delimiter").value);
  put("null", $("#opt-null").value);
  put("max_rejects", $("#opt-max-rejects").value);
  if (!$("#opt-header").checked) q.set("header", "false");
  if ($("#opt-force").checked) q.set("force", "true");
  return q;
}

$("#upload-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const file = $("#file").files[0];
  if (!file) return;
  localStorage.setItem("nexus.model", $("#model").value);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/v2/jobs?" + uploadQuery());
  xhr.setRequestHeader("Authorization", "Bearer " + state.access);
  xhr.setRequestHeader("Content-Type", "text/csv");
  xhr.setRequestHeader("X-Filename", file.name);
  xhr.upload.onprogress = (ev) => {
    if (!ev.lengthComputable) return;
    const pct = Math.round(100 * ev.loaded / ev.total);
    $("#upload-progress").value = pct;
    $("#upload-text").textContent = `uploading ${pct}%`;
  };
  xhr.onload = () => {
    if (xhr.status === 202) {
      $("#upload-progress").value = 100;
      $("#upload-text").textContent = "uploaded 100%";
      const job = JSON.parse(xhr.responseText);
      $("#upload-text").dataset.job = job.job_id;
      upsertJob(job);
    } else {
      let detail = xhr.statusText;
      try { detail = JSON.parse(xhr.responseText).detail || detail; } catch (_) {}
      $("#upload-text").textContent = "upload failed: " + detail;
    }
  };
  xhr.onerror = () => { $("#upload-text").textContent = "upload failed"; };
  xhr.send(file);
});

(function resume() {
  const saved = JSON.parse(sessionStorage.getItem("nexus") || "null");
  if (saved && saved.access) {
    state.access = saved.access; state.refresh = saved.refresh; state.user = saved.user;
    showApp().catch(showLogin);
  }
})();
