"use strict";
const $ = (id) => document.getElementById(id);
let lastSeq = 0;
const headers = () => {
  const t = sessionStorage.getItem("reidcam-token");
  return t ? { Authorization: "Bearer " + t } : {};
};
async function call(path, init = {}) {
  const r = await fetch(path, { ...init, headers: { ...headers(), ...(init.headers || {}) } });
  if (r.status === 401) { $("login").style.display = "block"; throw new Error("token needed"); }
  if (!r.ok) { const b = await r.json().catch(() => ({})); throw new Error(b.error || r.statusText); }
  return r;
}
async function api(path, init = {}) { return (await call(path, init)).json(); }
// Pictures need the token too: fetched, shown from blob: URLs (the old one released).
async function picture(img, path) {
  const blob = await (await call(path)).blob();
  const old = img.src;
  img.src = URL.createObjectURL(blob);
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
}
const thumbs = new Map(); // id -> { url, at }
let pictured = new Map(); // id -> identity with a thumbnail (the last list)
async function thumbnail(img, p) {
  let t = thumbs.get(p.id);
  if (!t || Date.now() - t.at > 30000) {
    const blob = await (await call(p.thumbnail)).blob();
    if (t) URL.revokeObjectURL(t.url);
    t = { url: URL.createObjectURL(blob), at: Date.now() };
    thumbs.set(p.id, t);
  }
  img.src = t.url;
}
function text(el, s) { el.textContent = s; return el; }
function el(tag, s) { return text(document.createElement(tag), s === undefined ? "" : s); }
function kib(n) { return (n / 1024).toFixed(n < 10240 ? 1 : 0) + " KiB"; }
function when(ms) { return new Date(ms).toLocaleString(); }
async function people() {
  const { identities } = await api("/api/v1/identities");
  text($("count"), "(" + identities.length + ")");
  pictured = new Map(identities.filter((p) => p.thumbnail).map((p) => [p.id, p]));
  const grid = $("people");
  grid.replaceChildren(...identities.map((p) => {
    const card = el("div"); card.className = "card"; card.dataset.id = p.id;
    if (p.thumbnail) {
      const img = el("img"); img.className = "thumb"; img.alt = "person " + p.id;
      thumbnail(img, p).catch(() => {});
      card.append(img);
    }
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
      thumbs.delete(p.id);
    };
    card.append(rename, erase);
    return card;
  }));
}
async function enrol(init) {
  const name = $("enrol-name").value.trim();
  await act(async () => {
    const r = await init(name);
    text($("enrolled"), "enrolled as person " + r.id + (name ? " (" + name + ")" : ""));
    $("enrol-name").value = "";
  });
}
$("enrol").onclick = () => enrol((label) =>
  api("/api/v1/enrol", { method: "POST", body: JSON.stringify({ label: label || null }) }));
$("enrol-file").onchange = () => {
  const file = $("enrol-file").files[0];
  if (!file) return;
  enrol((label) => api("/api/v1/enrol?label=" + encodeURIComponent(label),
    { method: "POST", body: file, headers: { "Content-Type": file.type || "image/jpeg" } }));
  $("enrol-file").value = "";
};
async function live() { await picture($("live"), "/api/v1/frame.jpg"); }
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
    el("div", "gallery " + g.identities + " of " + g.capacity + " identities · " + kib(g.used_bytes) + " used of " + kib(g.budget_bytes)),
    el("div", s.thumbnails ? "thumbnails " + s.thumbnails.files + " · " + kib(s.thumbnails.bytes) + " of " + kib(s.thumbnails.budget_bytes) : "no thumbnails kept"),
    el("div", "up " + Math.round(s.uptime_secs) + " s · version " + s.version));
}
async function events() {
  const r = await api("/api/v1/events?since=" + lastSeq);
  lastSeq = r.last_seq;
  const box = $("events");
  for (const e of r.events) {
    const who = e.identity ? (e.identity.label || (e.identity.id !== undefined ? "person " + e.identity.id : e.identity.decision)) : "";
    const row = el("div"); row.className = "event";
    const p = e.identity && pictured.get(e.identity.id);
    if (p) {
      const img = el("img"); img.className = "mini"; img.alt = "";
      thumbnail(img, p).catch(() => {});
      row.append(img);
    }
    row.append(el("span", e.time.slice(11, 19) + " " + e.event + " track " + e.track + " " + who));
    box.prepend(row);
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
// The live frame more often than the rest.
const refresh = () => live().catch((e) => { $("live").alt = "no frame: " + e.message; });
refresh();
setInterval(refresh, 1000);
