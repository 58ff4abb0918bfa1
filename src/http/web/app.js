"use strict";
const $ = (id) => document.getElementById(id);
let lastSeq = 0;
const headers = () => {
  const t = sessionStorage.getItem("reidcam-token");
  return t ? { Authorization: "Bearer " + t } : {};
};
async function api(path, init = {}) {
  const r = await fetch(path, { ...init, headers: { ...headers(), ...(init.headers || {}) } });
  if (r.status === 401) { $("login").style.display = "block"; throw new Error("token needed"); }
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}
function text(el, s) { el.textContent = s; return el; }
function el(tag, s) { return text(document.createElement(tag), s === undefined ? "" : s); }
function when(ms) { return new Date(ms).toLocaleString(); }
async function people() {
  const { identities } = await api("/api/v1/identities");
  text($("count"), "(" + identities.length + ")");
  const grid = $("people");
  grid.replaceChildren(...identities.map((p) => {
    const card = el("div"); card.className = "card"; card.dataset.id = p.id;
    card.append(el("b", p.label || "person " + p.id), el("small", "id " + p.id + (p.pinned ? " · enrolled" : "")),
                el("small", "seen " + p.times_seen + "× · last " + when(p.last_seen_ms)));
    const rename = el("button", "Rename"); rename.className = "rename";
    rename.onclick = async () => {
      const label = prompt("Name for person " + p.id, p.label || "");
      if (label === null) return;
      await act(() => api("/api/v1/identities/" + p.id, { method: "PATCH", body: JSON.stringify({ label }) }));
    };
    const erase = el("button", "Delete"); erase.className = "delete";
    erase.onclick = async () => {
      if (!confirm("Erase person " + p.id + " and everything stored about them?")) return;
      await act(() => api("/api/v1/identities/" + p.id, { method: "DELETE" }));
    };
    card.append(rename, erase);
    return card;
  }));
}
async function act(f) {
  try { await f(); text($("error"), ""); await people(); } catch (e) { text($("error"), e.message); }
}
async function status() {
  const s = await api("/api/v1/status");
  text($("camera"), s.camera + " · " + s.source);
  text($("fps"), s.fps.toFixed(1) + " fps");
  const g = s.gallery;
  $("status").replaceChildren(
    el("div", "model " + s.model), el("div", "detector " + s.detector),
    el("div", "frames " + s.frames + " · per frame " + s.stage_ms.total.toFixed(1) + " ms"),
    el("div", "gallery " + g.identities + " of " + g.capacity + " · " + g.bytes + " of " + g.budget_bytes + " bytes"),
    el("div", "up " + Math.round(s.uptime_secs) + " s · version " + s.version));
}
async function events() {
  const r = await api("/api/v1/events?since=" + lastSeq);
  lastSeq = r.last_seq;
  const box = $("events");
  for (const e of r.events) {
    const who = e.identity ? (e.identity.label || (e.identity.id !== undefined ? "person " + e.identity.id : e.identity.decision)) : "";
    box.prepend(el("div", e.time.slice(11, 19) + " " + e.event + " track " + e.track + " " + who));
  }
  while (box.childElementCount > 100) box.lastChild.remove();
}
async function health() {
  const r = await fetch("/healthz"); const h = await r.json();
  text($("health"), h.healthy ? "healthy" : "unhealthy: " + h.reason);
}
async function tick() {
  for (const f of [health, status, people, events]) {
    try { await f(); } catch (e) { text($("error"), e.message); }
  }
}
$("save-token").onclick = () => {
  sessionStorage.setItem("reidcam-token", $("token").value.trim());
  $("login").style.display = "none"; tick();
};
tick();
setInterval(tick, 2000);
