// Godwit dashboard: polls the node's API (under /api, with the session cookie) every
// POLL_MS and draws the tables and the load plot. Plain JS, no library, no build step.
// Actions carry the session's CSRF token in the X-Godwit-CSRF header.
"use strict";

const POLL_MS = 1500;
let session = null;
let timer = null;
// Which optional API routes this node has (filled as 404s come back).
const missing = new Set();
// What the tables were last drawn from (the plot and actions use it).
let state = { nodes: [], processes: [], images: [], services: [] };

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}

function svgEl(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  return e;
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function when(ms) {
  if (!ms) return "—";
  return new Date(ms).toLocaleString();
}

function say(text, ok) {
  const m = document.getElementById("message");
  m.textContent = text;
  m.className = ok ? "ok" : "bad";
}

// GET an API path; null when the route does not exist on this node (404 "no route").
async function get(path) {
  const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (r.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  const body = await r.json().catch(() => ({}));
  if (r.status === 404 && String(body.error || "").startsWith("no route")) {
    missing.add(path.split("?")[0]);
    return null;
  }
  if (!r.ok) throw new Error(body.error || (path + ": " + r.status));
  return body;
}

// An action: POST (or DELETE) with the CSRF header. Throws with the API's message.
async function act(method, path, body) {
  const r = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Godwit-CSRF": session.csrf },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  const v = await r.json().catch(() => ({}));
  if (r.status === 404 && String(v.error || "").startsWith("no route")) {
    throw new Error("not available on this node (" + method + " " + path.replace(/^\/api/, "") + " is not part of its API yet)");
  }
  if (!r.ok) throw new Error(v.error || (method + " " + path + ": " + r.status));
  return v;
}

// Runs an action from a button, reporting the outcome (with `detail(answer)` when
// given), then refreshes at once.
async function run(button, what, fn, detail) {
  button.disabled = true;
  say(what + "…", true);
  try {
    const v = await fn();
    say(what + ": done" + (detail ? detail(v) : v && v.id ? " (" + v.id + ")" : ""), true);
  } catch (e) {
    say(what + ": " + e.message, false);
  } finally {
    button.disabled = false;
    poll();
  }
}

function button(label, action, onclick, enabled) {
  return el("button", { type: "button", "data-action": action, disabled: enabled === false, onclick }, label);
}


// Updates a table's rows in place, keyed by `attr`: a row whose data (`sig`) did not
// change is kept as it is (what the operator typed or chose in it stays), a changed one
// is rebuilt keeping the values of its inputs and selects, unless the operator is in
// it; `live(row, item)` then refreshes the cells that change all the time.
function updateRows(tbody, items, attr, key, sig, build, live, empty) {
  const old = new Map([...tbody.querySelectorAll("tr[" + attr + "]")].map((r) => [r.getAttribute(attr), r]));
  const rows = items.map((it) => {
    const k = String(key(it));
    const s = JSON.stringify(sig(it));
    let row = old.get(k);
    if (!row || (row.dataset.sig !== s && !row.contains(document.activeElement))) {
      const fresh = build(it);
      fresh.dataset.sig = s;
      if (row) {
        for (const inp of row.querySelectorAll("[data-role]")) {
          const twin = fresh.querySelector('[data-role="' + inp.dataset.role + '"]');
          if (twin && inp.type === "checkbox") twin.checked = inp.checked;
          else if (twin && inp.value !== "" && (twin.tagName !== "SELECT" || [...twin.options].some((o) => o.value === inp.value))) twin.value = inp.value;
        }
      }
      row = fresh;
    }
    if (live) live(row, it);
    return row;
  });
  const keep = new Set(rows);
  for (const r of [...tbody.children]) if (!keep.has(r)) r.remove();
  rows.forEach((r, i) => { if (tbody.children[i] !== r) tbody.insertBefore(r, tbody.children[i] || null); });
  if (!items.length) tbody.append(el("tr", {}, el("td", { colspan: 12, class: "muted", text: empty })));
}

// ---- nodes ---------------------------------------------------------------

// The nodes of GET /v1/nodes (this node first, then its peers with their health and
// the load of their last heartbeat), or this node alone.
function nodeRows(nodes, health, load) {
  const row = (name, addr, isSelf, h, l) => ({
    node: addr, name, self: isSelf, health: h,
    load1: l && l.loadavg ? l.loadavg[0] : undefined,
    cpu: l ? l.cpu_percent : undefined,
    free: l ? l.mem_available_bytes : undefined,
    procs: l && Array.isArray(l.processes) ? l.processes.length : undefined,
    unix_ms: l ? l.unix_ms : undefined,
  });
  if (!nodes) {
    return [row(session.node, session.node, true, health && health.ok ? "alive" : "unreachable", load && load.load)];
  }
  return (nodes.nodes || []).map((n) => row(n.name, n.addr, !!n.self, n.health, n.load));
}

// Peers' load as their heartbeats bring it, kept by the page (this node's own comes
// from GET /v1/load/history).
const peerSamples = new Map();
function notePeerLoads(rows) {
  for (const r of rows) {
    if (r.self || r.unix_ms === undefined || r.load1 === undefined) continue;
    const list = peerSamples.get(r.node) || [];
    if (!list.length || list[list.length - 1].t_unix_ms !== r.unix_ms) list.push({ t_unix_ms: r.unix_ms, load1: r.load1 });
    while (list.length > 600) list.shift();
    peerSamples.set(r.node, list);
  }
}

function drawNodes(rows, available) {
  const tb = document.querySelector("#nodes tbody");
  tb.replaceChildren(...rows.map((r) => el("tr", { "data-node": r.node, "data-health": String(r.health) },
    el("td", { text: r.name && r.name !== r.node ? r.name + " (" + r.node + ")" + (r.self ? " · this node" : "") : r.node }),
    el("td", { class: /^(ok|alive|healthy|up)$/.test(String(r.health)) ? "ok" : "bad", text: String(r.health) }),
    el("td", { class: "num", text: r.load1 === undefined ? "—" : Number(r.load1).toFixed(2) }),
    el("td", { class: "num", text: r.cpu === undefined ? "—" : Number(r.cpu).toFixed(0) + " %" }),
    el("td", { class: "num", text: bytes(r.free) }),
    el("td", { class: "num", text: r.procs === undefined ? "—" : String(r.procs) }),
  )));
  document.getElementById("nodes-note").textContent = available
    ? ""
    : "Other nodes: not available (this node has no GET /v1/nodes); showing this node only.";
}

function drawBalancing(b) {
  const box = document.getElementById("balancing");
  const label = document.getElementById("balancing-state");
  if (!b) {
    box.disabled = true;
    box.checked = false;
    label.textContent = "not available";
    return;
  }
  box.disabled = !session.operate;
  if (document.activeElement !== box) box.checked = !!b.enabled;
  label.textContent = b.enabled ? "on" : "off";
}

// ---- processes -------------------------------------------------------------

function targets() {
  return state.nodes.filter((n) => !n.self && n.health !== "dead").map((n) => n.node);
}

function drawProcesses(procs, images) {
  const tb = document.querySelector("#processes tbody");
  const ckOf = (p) => images.filter((i) => (i.pids || []).includes(p.pid)).map((i) => i.id);
  updateRows(tb, procs, "data-pid", (p) => p.pid,
    (p) => [p.program, p.args, p.kind, p.origin, ckOf(p), targets(), state.node],
    (p) => {
      const select = el("select", { "data-role": "target", "aria-label": "target node" },
        ...(targets().length
          ? targets().map((t) => el("option", { value: t, text: t }))
          : [el("option", { value: "", text: "no other node known" })]));
      const custom = el("input", { type: "text", placeholder: "or ADDR:PORT", "data-role": "target-text", size: 14 });
      const pidns = el("input", { type: "checkbox", "data-role": "pidns", title: "restore there in a new PID namespace (when its PIDs are taken there)" });
      const started = p.kind === "started";
      const mine = ckOf(p);
      return el("tr", { "data-pid": String(p.pid), "data-kind": p.kind },
        el("td", { class: "num", text: String(p.pid) }),
        el("td", { text: [p.program, ...(p.args || [])].join(" "), title: p.name }),
        el("td", { text: state.node || session.node }),
        el("td", { class: "kind", text: p.kind }),
        el("td", { class: "st" }),
        el("td", { class: "num cpu" }),
        el("td", { class: "num mem" }),
        el("td", { class: "origin", text: p.origin || "" }),
        el("td", { class: "checkpoints", text: mine.length ? mine.join(", ") : "none" }),
        el("td", {}, el("div", { class: "actions" },
          button("Checkpoint", "checkpoint", (ev) => run(ev.target, "checkpoint of " + p.pid,
            () => act("POST", "/api/v1/processes/" + p.pid + "/checkpoint", { leave_running: true })), session.operate),
          button("Stop", "stop", (ev) => run(ev.target, "stop " + p.pid,
            () => act("POST", "/api/v1/exec/" + p.pid + "/signal", { signal: "TERM" })), session.operate && started),
          button("Protect", "protect", (ev) => run(ev.target, "protection of " + p.pid,
            () => act("POST", "/api/v1/protected", { pid: p.pid, every_secs: 10, replicas: 1 })), session.operate),
          select, custom,
          el("label", { class: "muted" }, pidns, "new PID ns"),
          button("Migrate", "migrate", (ev) => {
            const to = custom.value.trim() || select.value;
            if (!to) { say("migrate " + p.pid + ": choose a target node or give ADDR:PORT", false); return; }
            run(ev.target, "migration of " + p.pid + " to " + to,
              () => act("POST", "/api/v1/processes/" + p.pid + "/migrate", { to, pid_ns: pidns.checked }));
          }, session.operate),
        )),
      );
    },
    (row, p) => {
      row.querySelector(".st").textContent = p.state;
      row.querySelector(".cpu").textContent = Number(p.cpu_percent || 0).toFixed(1) + " %";
      row.querySelector(".mem").textContent = bytes(p.memory_bytes);
    },
    "no process managed by this node");
}

// Protected processes (GET /v1/protected): those this node owns, with the
// copies on its peers and how old the oldest is, and those it holds a copy of.
function drawProtected(prot) {
  const tb = document.querySelector("#protected tbody");
  const note = document.getElementById("protected-note");
  if (!prot) { note.textContent = "not available on this agent"; return; }
  const rows = (prot.owned || []).map((r) => ({ ...r, role: "owned" }))
    .concat((prot.held || []).map((h) => ({ id: h.id, owner: h.owner, generation: h.generation, last_checkpoint: h.checkpoint, role: "held", age_ms: h.age_ms })));
  updateRows(tb, rows, "data-protected", (r) => r.role + ":" + r.id, (r) => [r.owner, r.generation, r.pid, r.holders],
    (r) => el("tr", { "data-protected": r.role + ":" + r.id, "data-role-kind": r.role },
      el("td", { text: r.id }),
      el("td", { class: "num", text: r.pid ? String(r.pid) : "" }),
      el("td", { text: r.program || (r.role === "held" ? "a copy held for " + r.owner : "") }),
      el("td", { class: "owner", text: r.owner }),
      el("td", { class: "num gen", text: String(r.generation) }),
      el("td", { class: "num taken" }),
      el("td", { class: "newest" }),
      el("td", { text: (r.holders || []).join(", ") }),
      el("td", { class: "num lag" }),
    ),
    (row, r) => {
      row.querySelector(".taken").textContent = r.taken === undefined ? "" : String(r.taken);
      row.querySelector(".newest").textContent = r.last_checkpoint || "none yet";
      const lag = r.role === "held" ? r.age_ms : r.lag_ms;
      row.querySelector(".lag").textContent = lag === undefined || lag === null || lag > 1e12 ? "no copy yet" : (lag / 1000).toFixed(1) + " s";
    },
    "no protected process here");
  note.textContent = "A protected process is checkpointed every few seconds and copied to peers; if its node dies, the first live peer holding a copy runs it (generation + 1).";
}

function drawImages(images) {
  const tb = document.querySelector("#images tbody");
  updateRows(tb, images, "data-image", (i) => i.id, (i) => i,
    (i) => el("tr", { "data-image": i.id },
      el("td", { text: i.id }),
      el("td", { text: (i.pids || []).join(", ") }),
      el("td", { class: "num", text: bytes(i.bytes) }),
      el("td", { text: when(i.created_unix_ms) }),
      el("td", { text: i.hostname || "" }),
      el("td", {}, el("div", { class: "actions" },
        button("Restore", "restore", (ev) => run(ev.target, "restore of " + i.id,
          () => act("POST", "/api/v1/images/" + encodeURIComponent(i.id) + "/restore", {})), session.operate),
        button("Restore in a new PID namespace", "restore-pidns", (ev) => run(ev.target, "restore of " + i.id,
          () => act("POST", "/api/v1/images/" + encodeURIComponent(i.id) + "/restore", { pid_ns: true })), session.operate),
        button("Delete", "delete", (ev) => {
          if (!confirm("Delete checkpoint " + i.id + "?")) return;
          run(ev.target, "delete " + i.id, () => act("DELETE", "/api/v1/images/" + encodeURIComponent(i.id)));
        }, session.operate),
      )),
    ),
    null, "no checkpoint in this node's store");
}

// ---- services --------------------------------------------------------------

// A service that does not run here but that the name service has elsewhere (moved
// to another node) is shown so, and not started here again.
function serviceState(s) {
  if (s.running) return "running (pid " + s.pid + ")";
  if (s.elsewhere) return "runs elsewhere (" + s.elsewhere + ")";
  return s.exit_code === null || s.exit_code === undefined ? "stopped" : "exited " + s.exit_code;
}

function drawServices(services) {
  const tb = document.querySelector("#services tbody");
  updateRows(tb, services, "data-uuid", (s) => s.uuid, (s) => [s, targets()], (s) => {
    const base = "/api/v1/services/" + encodeURIComponent(s.uuid);
    const secs = el("input", { type: "number", min: 0, step: "any", placeholder: "secs", "data-role": "interval" });
    const pick = el("select", { "data-role": "checkpoint", "aria-label": "checkpoint" },
      ...s.checkpoints.slice().reverse().map((c) => el("option", { value: c.id, text: c.id + " (" + when(c.created_unix_ms) + ")" })));
    const select = el("select", { "data-role": "target", "aria-label": "target node" },
      ...(targets().length
        ? targets().map((t) => el("option", { value: t, text: t }))
        : [el("option", { value: "", text: "no other node known" })]));
    const custom = el("input", { type: "text", placeholder: "or ADDR:PORT", "data-role": "target-text", size: 14 });
    const here = !s.elsewhere;
    return el("tr", { "data-uuid": s.uuid },
      el("td", { text: s.uuid }),
      el("td", { text: s.program || "—" }),
      el("td", { text: s.running ? session.node : "—" }),
      el("td", { text: (s.running ? s.address : s.elsewhere) || "—" }),
      el("td", { class: s.running ? "ok" : "muted", text: serviceState(s) }),
      el("td", { class: "num", text: s.restarts === undefined ? "—" : String(s.restarts) }),
      el("td", { text: s.checkpoints.length ? s.checkpoints.length + ", newest " + s.checkpoints[s.checkpoints.length - 1].id : "none" }),
      el("td", {}, el("div", { class: "actions" },
        button("Checkpoint", "checkpoint", (ev) => run(ev.target, "checkpoint of " + s.uuid,
          () => act("POST", base + "/manage", { op: "checkpoint" })), session.operate && s.running),
        secs,
        button("Set interval", "interval", (ev) => {
          const v = Number(secs.value);
          if (secs.value === "" || !(v >= 0)) { say("interval: give a number of seconds (0 turns periodic checkpoints off)", false); return; }
          run(ev.target, "interval of " + s.uuid, () => act("POST", base + "/manage", { op: "interval", secs: v }));
        }, session.operate && s.running),
        pick,
        button("Restore", "restore", (ev) => run(ev.target, "restore of " + s.uuid + " to " + pick.value,
          () => act("POST", base + "/start", { checkpoint: pick.value })), session.exec && !s.running && here && s.started_here && s.checkpoints.length > 0),
        button("Stop", "stop", (ev) => run(ev.target, "stop " + s.uuid,
          () => act("POST", base + "/manage", { op: "stop", checkpoint: true })), session.operate && s.running),
        button("Start", "start", (ev) => run(ev.target, "start " + s.uuid,
          () => act("POST", base + "/start", {})), session.exec && !s.running && here && s.started_here),
        select, custom,
        button("Migrate", "migrate", (ev) => {
          const to = custom.value.trim() || select.value;
          if (!to) { say("migrate " + s.uuid + ": choose a target node or give ADDR:PORT", false); return; }
          run(ev.target, "migration of " + s.uuid + " to " + to,
            () => act("POST", base + "/migrate", { to }),
            (v) => " (serving at " + v.address + " on " + v.node + (v.pid ? ", pid " + v.pid : "") + "; calls held " + Number(v.switch_over_ms || 0).toFixed(1) + " ms)");
        }, session.operate && s.running),
      )),
    );
  }, null, "no conformist service on this node");
}

// ---- plot ------------------------------------------------------------------

const COLORS = ["#2563eb", "#d97706", "#059669", "#9333ea", "#dc2626", "#0891b2"];
const MARKS = { migration: "#9333ea", failure: "#c0262d", checkpoint: "#15803d", restore: "#0891b2", stop: "#6b7385", back: "#059669" };

function drawPlot(hist) {
  const box = document.getElementById("plot");
  const W = 900, H = 260, L = 44, R = 10, T = 10, B = 24;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "load per node over time", id: "load-plot" });
  const series = (hist && hist.nodes) || [];
  const events = (hist && hist.events) || [];
  const all = series.flatMap((n) => n.samples || []);
  const now = Date.now();
  const t0 = all.length ? Math.min(...all.map((s) => s.t_unix_ms)) : now - 60000;
  const t1 = Math.max(now, t0 + 1000);
  const ymax = Math.max(1, ...all.map((s) => Number(s.load1 ?? 0))) * 1.15;
  const x = (t) => L + (W - L - R) * (t - t0) / (t1 - t0);
  const y = (v) => H - B - (H - B - T) * v / ymax;
  svg.append(svgEl("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  svg.append(svgEl("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  for (let i = 0; i <= 4; i++) {
    const v = ymax * i / 4;
    svg.append(svgEl("text", { x: 4, y: y(v) + 4, fill: "#6b7385", text: v.toFixed(1) }));
    svg.append(svgEl("line", { class: "axis", x1: L, y1: y(v), x2: W - R, y2: y(v), "stroke-dasharray": "2 4" }));
  }
  svg.append(svgEl("text", { x: L, y: H - 6, fill: "#6b7385", text: new Date(t0).toLocaleTimeString() }));
  svg.append(svgEl("text", { x: W - R - 60, y: H - 6, fill: "#6b7385", text: new Date(t1).toLocaleTimeString() }));
  series.forEach((n, i) => {
    const pts = (n.samples || []).map((s) => `${x(s.t_unix_ms).toFixed(1)},${y(Number(s.load1 ?? 0)).toFixed(1)}`);
    if (pts.length) {
      svg.append(svgEl("polyline", { points: pts.join(" "), fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 2, "data-node": n.node }));
    }
    svg.append(svgEl("text", { x: L + 8, y: T + 12 + 14 * i, fill: COLORS[i % COLORS.length], text: "■ " + n.node }));
  });
  for (const e of events) {
    if (e.t_unix_ms < t0) continue;
    const c = MARKS[e.kind] || "#6b7385";
    const m = svgEl("line", { x1: x(e.t_unix_ms), x2: x(e.t_unix_ms), y1: T, y2: H - B, stroke: c, "stroke-width": e.kind === "failure" || e.kind === "migration" ? 2 : 1, "stroke-dasharray": e.kind === "failure" ? "" : "4 3", "data-kind": e.kind, class: "marker" });
    m.append(svgEl("title", { text: `${e.kind} on ${e.node}: ${e.detail} (${new Date(e.t_unix_ms).toLocaleTimeString()})` }));
    svg.append(m);
  }
  const legend = Object.entries(MARKS).map(([k, c], i) => svgEl("text", { x: W - R - 500 + 84 * i, y: T + 12, fill: c, text: "| " + k }));
  legend.forEach((l) => svg.append(l));
  box.replaceChildren(svg);
  document.getElementById("plot-note").textContent =
    "Load average (1 min): this node's history, its peers' from their heartbeats since this page opened. Vertical marks: migrations, failures (actions refused, programs that died, nodes declared dead), checkpoints, restores, stops.";
}

function drawHistory(events) {
  const ol = document.getElementById("history");
  ol.replaceChildren(...events.slice(-100).reverse().map((e) => el("li", { "data-kind": e.kind, class: e.kind === "failure" ? "bad" : "" },
    `${new Date(e.t_unix_ms).toLocaleTimeString()} ${e.node} ${e.kind}: ${e.detail}`)));
}

// ---- polling ---------------------------------------------------------------

async function optional(path) {
  if (missing.has(path.split("?")[0])) return null;
  try { return await get(path); } catch (e) { if (e.message === "logged out") throw e; return null; }
}

async function poll() {
  clearTimeout(timer);
  try {
    const all = document.getElementById("show-all").checked;
    const [health, nodes, procs, exec, images, store, local, history, load, balance, prot, names] = await Promise.all([
      get("/api/v1/health").catch(() => null),
      optional("/api/v1/nodes"),
      get("/api/v1/processes" + (all ? "?all=true" : "")),
      get("/api/v1/exec"),
      get("/api/v1/images"),
      get("/api/v1/store"),
      get("/dash/history"),
      optional("/api/v1/load/history"),
      optional("/api/v1/load"),
      optional("/api/v1/balance"),
      optional("/api/v1/protected"),
      optional("/api/v1/names"),
    ]);
    state.node = procs.node;
    state.processes = procs.processes;
    state.images = images.images;
    // Services: every instance this agent started that said GODWIT_READY, and every
    // UUID in the store; the newest instance of each.
    const byUuid = new Map();
    for (const p of exec.processes) {
      if (!p.uuid) continue;
      const cur = byUuid.get(p.uuid);
      if (!cur || (p.running && !cur.running) || (p.running === cur.running && p.pid > cur.pid)) {
        byUuid.set(p.uuid, { uuid: p.uuid, program: p.program, address: p.address, running: p.running, pid: p.pid, exit_code: p.exit_code, restarts: p.restarts, started_here: true });
      }
    }
    for (const u of store.services) if (!byUuid.has(u)) byUuid.set(u, { uuid: u, running: false, started_here: false });
    // Where this node's name service has a service that does not run here.
    const bound = new Map(((names && names.services) || []).map((r) => [r.uuid, r.address]));
    for (const s of byUuid.values()) if (!s.running && bound.has(s.uuid)) s.elsewhere = bound.get(s.uuid);
    const services = [...byUuid.values()].sort((a, b) => a.uuid.localeCompare(b.uuid));
    const lists = await Promise.all(services.map((s) => get("/api/v1/store/" + encodeURIComponent(s.uuid)).catch(() => ({ checkpoints: [] }))));
    services.forEach((s, i) => { s.checkpoints = lists[i].checkpoints || []; });
    state.services = services;
    state.nodes = nodeRows(nodes, health, load);
    notePeerLoads(state.nodes);
    drawNodes(state.nodes, !!nodes);
    drawBalancing(balance);
    drawProcesses(state.processes, state.images);
    drawImages(state.images);
    drawProtected(prot);
    drawServices(services);
    const series = [{
      node: session.node,
      samples: ((history && history.samples) || []).map((s) => ({ t_unix_ms: s.unix_ms, load1: s.loadavg ? s.loadavg[0] : 0 })),
    }];
    for (const [node, samples] of peerSamples) series.push({ node, samples });
    // The balancer's own moves (GET /v1/balance "done") are migrations too.
    const moved = ((balance && balance.done) || []).map((d) => ({
      t_unix_ms: d.unix_ms, node: session.node, kind: d.error ? "failure" : "migration",
      detail: "balancer: " + (typeof d.move === "string" ? d.move : JSON.stringify(d.move)) + (d.error ? ": " + d.error : ""),
    }));
    drawPlot({ nodes: series, events: (local.events || []).concat(moved) });
    drawHistory(local.events || []);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    if (e.message === "logged out") return;
    document.getElementById("updated").textContent = "update failed: " + e.message;
  }
  timer = setTimeout(poll, POLL_MS);
}

async function start() {
  const r = await fetch("/dash/session", { credentials: "same-origin", cache: "no-store" });
  if (!r.ok) { location.href = "/login"; return; }
  session = await r.json();
  document.getElementById("who").textContent = `node ${session.node} · scopes ${session.scopes}`;
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", credentials: "same-origin", headers: { "X-Godwit-CSRF": session.csrf } });
    location.href = "/login";
  });
  document.getElementById("show-all").addEventListener("change", poll);
  document.getElementById("balancing").addEventListener("change", async (ev) => {
    const on = ev.target.checked;
    try {
      await act("POST", "/api/v1/balance", { enabled: on });
      say("balancing " + (on ? "on" : "off"), true);
    } catch (e) {
      ev.target.checked = !on;
      say("balancing: " + e.message, false);
    }
    poll();
  });
  poll();
}

document.addEventListener("DOMContentLoaded", start);
