// The Nexus dashboard: log in, upload a file for a model, watch every job
// live over the WebSocket, cancel, download rejects. Plain JS, no build step.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { access: null, refresh: null, user: null, jobs: new Map(), ws: null };

function saveTokens(pair) {
  state.access = pair.access_token;
  state.refresh = pair.refresh_token;
  sessionStorage.setItem("nexus", JSON.stringify({ access: state.access, refresh: state.refresh }));
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

async function showApp() {
  $("#login").hidden = true; $("#app").hidden = false; $("#logout").hidden = false;
  const models = await (await api("/api/v2/models")).json();
  $("#model").innerHTML = models.map((m) => `<option value="${esc(m.name)}">${esc(m.name)}</option>`).join("");
  const page = await (await api("/api/v2/jobs?limit=50")).json();
  page.jobs.reverse().forEach(upsertJob);
  connect();
}

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function fmtEta(ms) {
  if (ms == null) return "";
  const s = Math.round(ms / 1000);
  return s >= 60 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${s}s`;
}

const FINAL = ["succeeded", "failed", "cancelled", "skipped"];

function upsertJob(update) {
  const id = update.job_id;
  const job = Object.assign(state.jobs.get(id) || {}, update);
  // Counters never go backwards, whatever order messages arrive in.
  const prev = state.jobs.get(id);
  state.jobs.set(id, job);
  let row = document.querySelector(`tr[data-job="${id}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.job = id;
    row.innerHTML = `<td class="file"></td><td class="model"></td><td class="status"></td>
      <td><div class="bar"><div></div></div></td><td class="num rate"></td><td class="num eta"></td>
      <td class="num committed"></td><td class="num rejected"></td><td class="actions"></td>`;
    $("#jobs tbody").prepend(row);
  }
  if (prev) for (const k of ["rows_read", "rows_committed", "rows_rejected", "bytes_read"]) {
    if (update[k] != null && prev[k] != null) job[k] = Math.max(prev[k], update[k]);
  }
  const done = FINAL.includes(job.status);
  const pct = job.status === "succeeded" ? 100
    : job.bytes_total ? Math.min(100, Math.round(100 * (job.bytes_read || 0) / job.bytes_total)) : 0;
  row.querySelector(".file").textContent = job.file_name || "";
  row.querySelector(".model").textContent = job.model || "";
  const st = row.querySelector(".status");
  st.textContent = job.status; st.className = "status status-" + job.status;
  const bar = row.querySelector(".bar > div");
  bar.style.width = pct + "%"; bar.parentElement.dataset.pct = pct;
  row.querySelector(".rate").textContent = done ? "" : Math.round(job.rows_per_sec || 0).toLocaleString();
  row.querySelector(".eta").textContent = done ? "" : fmtEta(job.eta_ms);
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

async function downloadRejects(id) {
  const blob = await (await api(`/api/v2/jobs/${id}/rejects`)).blob();
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = `rejects-${id}.csv`;
  document.body.append(a); a.click(); a.remove();
}

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
  saveTokens(await r.json());
  $("#who").textContent = $("#username").value;
  showApp();
});

$("#logout").addEventListener("click", async () => {
  await api("/api/v2/auth/logout", { method: "POST" }).catch(() => {});
  sessionStorage.removeItem("nexus");
  state.access = state.refresh = null;
  showLogin();
});

$("#upload-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const file = $("#file").files[0];
  if (!file) return;
  const q = new URLSearchParams({ model: $("#model").value, mode: $("#mode").value });
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/v2/jobs?" + q);
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
      upsertJob(JSON.parse(xhr.responseText));
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
    state.access = saved.access; state.refresh = saved.refresh;
    showApp().catch(showLogin);
  }
})();
