// The EVC console: plain JavaScript over the same HTTP API as any client (no build step,
// no CDN). Every value from the server goes into the page as text (textContent, never
// innerHTML). The token lives in this tab's sessionStorage and travels only in the
// Authorization header; the live stream is read with fetch() for the same reason.
"use strict";

const PAGE = 50; // rows per page of a list; the server pages, so 10,000 devices cost one page
const GALLERY = 24; // images per page of the results gallery
const state = { token: sessionStorage.getItem("evc-token"), me: null, view: null, stream: null };

// ------------------------------------------------------------------ helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function ago(t) {
  if (!t) return "never";
  const s = Date.now() / 1000 - t;
  if (s < 60) return `${Math.max(0, Math.round(s))} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(t * 1000).toISOString().slice(0, 16).replace("T", " ");
}

const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "");
const badge = (s) => h("span", { class: `badge ${s || ""}` }, s || "unknown");
const bytes = (n) => (n ? `${(n / 2 ** 30).toFixed(1)} GiB` : "");

function bar(percent, done) {
  const fill = h("span");
  fill.style.width = `${Math.min(100, percent)}%`;
  return h("span", { class: "inline" },
    h("span", { class: `bar${done ? " done" : ""}`, role: "progressbar",
      "aria-valuenow": percent, "aria-valuemin": 0, "aria-valuemax": 100 }, fill),
    h("span", { class: "pct" }, `${percent} %`));
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${state.token}` };
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options = { ...options, body: JSON.stringify(options.json) };
  }
  const res = await fetch(path, { ...options, headers });
  if (res.status === 401) { logout("The token was refused: log in again."); throw new Error("401"); }
  const body = res.headers.get("content-type")?.includes("json") ? await res.json() : null;
  if (!res.ok) {
    const d = body?.detail;
    throw new Error(typeof d === "string" ? d : JSON.stringify(d ?? res.statusText));
  }
  return body;
}

function pager(page, go) {
  const last = Math.max(0, Math.ceil(page.total / page.limit) - 1);
  const at = Math.floor(page.offset / page.limit);
  return h("div", { class: "pager" },
    h("button", { class: "secondary", disabled: at === 0, onclick: () => go(at - 1) }, "‹ Prev"),
    h("span", { class: "muted" }, page.total ? `${page.offset + 1}–${page.offset + page.items.length} of ${page.total}` : "none"),
    h("button", { class: "secondary", disabled: at >= last, onclick: () => go(at + 1) }, "Next ›"));
}

function table(columns, rows, onclick) {
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map(([title]) => h("th", {}, title)))),
    h("tbody", {}, rows.map((r) => h("tr", {
      class: onclick ? "clickable" : null, "data-key": r.name || r.id || null,
      onclick: onclick ? () => onclick(r) : null,
    }, columns.map(([, cell]) => h("td", {}, cell(r)))))));
}

function fail(where, err) {
  if (err.message === "401") return;
  where.replaceChildren(h("p", { class: "error" }, err.message));
}

const canOperate = () => state.me && state.me.role !== "viewer";

// ------------------------------------------------------------------ sparklines and map

function spark(values, cls) {
  const pts = values.map((v, i) => (v === null ? null : `${(i * 90) / Math.max(1, values.length - 1)},${22 - (v / 100) * 20 - 1}`)).filter(Boolean);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 90 22");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("class", cls);
  line.setAttribute("points", pts.join(" "));
  svg.append(line);
  return svg;
}

function drawMap(canvas, points) {
  const w = (canvas.width = canvas.clientWidth * devicePixelRatio);
  const ht = (canvas.height = canvas.clientHeight * devicePixelRatio);
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#e8eef6"; ctx.fillRect(0, 0, w, ht);
  if (!points.length) { ctx.fillStyle = "#5f6b7a"; ctx.fillText("No device has a position (lat/lon).", 10, 20); return; }
  const lats = points.map((p) => p[1]), lons = points.map((p) => p[2]);
  const pad = 2;
  const [la0, la1] = [Math.min(...lats) - pad, Math.max(...lats) + pad];
  const [lo0, lo1] = [Math.min(...lons) - pad, Math.max(...lons) + pad];
  const x = (lon) => ((lon - lo0) / (lo1 - lo0)) * (w - 20) + 10;
  const y = (lat) => ((la1 - lat) / (la1 - la0)) * (ht - 20) + 10;
  ctx.strokeStyle = "#cbd5e1";
  for (let g = Math.ceil(lo0); g <= lo1; g += 5) { ctx.beginPath(); ctx.moveTo(x(g), 0); ctx.lineTo(x(g), ht); ctx.stroke(); }
  for (let g = Math.ceil(la0); g <= la1; g += 5) { ctx.beginPath(); ctx.moveTo(0, y(g)); ctx.lineTo(w, y(g)); ctx.stroke(); }
  const r = (points.length > 1000 ? 1.5 : 4) * devicePixelRatio;
  for (const [name, lat, lon, status] of points) {
    ctx.fillStyle = status === "online" ? "#15803d" : status === "unknown" ? "#6b7280" : "#b91c1c";
    ctx.beginPath(); ctx.arc(x(lon), y(lat), r, 0, 7); ctx.fill();
    if (points.length <= 50) { ctx.fillStyle = "#1d2330"; ctx.font = `${11 * devicePixelRatio}px sans-serif`; ctx.fillText(name, x(lon) + r + 2, y(lat) + 4); }
  }
}

// ------------------------------------------------------------------ pages

const pages = {};

pages.fleet = {
  page: 0, status: "", q: "",
  async render(root) {
    const [summary, points] = await Promise.all([api("/api/devices/summary"), api("/api/devices/map")]);
    const list = h("div");
    const stats = h("div", { class: "stats" },
      h("div", {}, h("b", {}, summary.total), "devices"),
      Object.entries(summary.status).map(([k, n]) => h("div", {}, h("b", {}, n), k)),
      h("div", {}, h("b", {}, Object.keys(summary.arch).join(", ") || "–"), "arch"),
      h("div", {}, h("b", {}, Object.keys(summary.accelerator).join(", ") || "–"), "accelerators"));
    const search = h("input", { type: "search", placeholder: "name or host starts with…", value: this.q });
    const status = h("select", {}, ["", "online", "unreachable", "offline", "unknown"].map((s) => h("option", { value: s, selected: s === this.status }, s || "any status")));
    const apply = () => { this.q = search.value.trim(); this.status = status.value; this.page = 0; this.list(list); };
    search.addEventListener("change", apply); status.addEventListener("change", apply);
    const map = h("canvas", { class: "map", id: "map" });
    root.replaceChildren(
      h("h1", {}, "Fleet"),
      h("div", { class: "grid2" },
        h("div", { class: "card" }, stats, h("h2", {}, "Devices"), h("div", { class: "toolbar" }, search, status), list),
        h("div", { class: "card" }, h("h2", {}, "Map"), map, h("p", { class: "muted" }, `${points.points.length} devices with a position; green online, red not.`))));
    drawMap(map, points.points);
    await this.list(list);
  },
  async list(where) {
    const params = new URLSearchParams({ limit: PAGE, offset: this.page * PAGE });
    if (this.status) params.set("status", this.status);
    if (this.q) params.set("q", this.q);
    const page = await api(`/api/devices?${params}`);
    const names = page.items.map((d) => d.name);
    let series = {};
    if (names.length) {
      const sp = new URLSearchParams({ since: 3600, buckets: 24 });
      names.forEach((n) => sp.append("node", n));
      series = (await api(`/api/telemetry/series?${sp}`)).series;
    }
    const metric = (d, m) => (series[d.name] && series[d.name][m]) || [];
    where.replaceChildren(
      table([
        ["Name", (d) => h("b", {}, d.name)],
        ["Host", (d) => h("span", { class: "mono" }, `${d.host}:${d.port}`)],
        ["Status", (d) => h("span", { class: "status", "data-status": d.status }, badge(d.status))],
        ["Last seen", (d) => h("span", { title: when(d.last_seen) }, ago(d.last_seen))],
        ["Arch", (d) => d.arch || "?"],
        ["Accelerator", (d) => d.accelerator || "none"],
        ["Memory", (d) => bytes(d.mem_bytes)],
        ["CPU / mem (1 h)", (d) => h("span", {}, spark(metric(d, "cpu_pct"), "cpu"), " ", spark(metric(d, "mem_pct"), "mem"))],
        ["Groups", (d) => (d.groups || []).join(", ")],
      ], page.items, (d) => this.detail(d.name)),
      pager(page, (p) => { this.page = p; this.list(where); }),
      h("div", { id: "device-detail" }));
  },
  async detail(name) {
    const where = document.getElementById("device-detail");
    try {
      const d = await api(`/api/devices/${encodeURIComponent(name)}`);
      where.replaceChildren(h("div", { class: "card" },
        h("h2", {}, `${d.name} `, badge(d.status)),
        h("p", {}, `${d.os || ""} · kernel ${d.kernel || "?"} · ${d.cpu_count || "?"} CPUs · ${bytes(d.mem_bytes)} · Docker ${d.docker_version || "?"}`),
        h("h2", {}, "Running"),
        d.deployments.length ? table([["Model", (r) => `${r.model}:${r.version}`], ["State", (r) => badge(r.state)], ["Since", (r) => ago(r.finished)]], d.deployments) : h("p", { class: "muted" }, "No model runs here."),
        h("h2", {}, "Status changes"),
        table([["When", (e) => when(e.at)], ["From", (e) => e.from_state], ["To", (e) => badge(e.to_state)]], d.events)));
    } catch (err) { fail(where, err); }
  },
  onEvent(ev) { return ["node", "devices", "telemetry"].includes(ev.type); },
};

pages.models = {
  page: 0,
  async render(root) {
    const [models, running] = await Promise.all([api("/api/models"), api("/api/deployments")]);
    const hist = h("div");
    root.replaceChildren(
      h("h1", {}, "Models"),
      h("div", { class: "card" }, h("h2", {}, "Catalogue"),
        models.warning ? h("p", { class: "error" }, models.warning) : null,
        table([
          ["Model", (m) => h("b", {}, m.ref)], ["Runtime", (m) => m.runtime], ["Task", (m) => m.task],
          ["Arch", (m) => m.arch], ["Image", (m) => h("span", { class: "mono" }, m.image)],
          ["Pushed", (m) => (m.pushed_at ? ago(m.pushed_at) : "not pushed")],
          ["Runs on", (m) => (m.deployed_on || []).join(", ") || "–"],
        ], models.items)),
      h("div", { class: "card" }, h("h2", {}, "What runs where"),
        running.items.length ? table([
          ["Node", (r) => r.node], ["Model", (r) => `${r.model}:${r.version}`], ["State", (r) => badge(r.state)],
          ["Memory", (r) => r.memory || ""], ["Since", (r) => ago(r.finished || r.started)],
        ], running.items) : h("p", { class: "muted" }, "Nothing is deployed.")),
      h("div", { class: "card" }, h("h2", {}, "History"), hist));
    await this.history(hist);
  },
  async history(where) {
    const page = await api(`/api/deployments/history?limit=${PAGE}&offset=${this.page * PAGE}`);
    where.replaceChildren(
      table([["When", (r) => when(r.started)], ["Action", (r) => r.action], ["Model", (r) => `${r.model}:${r.version}`],
        ["Node", (r) => r.node], ["State", (r) => badge(r.state)], ["Error", (r) => r.error || ""]], page.items),
      pager(page, (p) => { this.page = p; this.history(where); }));
  },
  onEvent(ev) { return ev.type === "deployment"; },
};

pages.jobs = {
  page: 0,
  async render(root, arg) {
    if (arg) return this.job(root, arg);
    const list = h("div");
    root.replaceChildren(h("h1", {}, "Jobs"), canOperate() ? await this.form() : null,
      h("div", { class: "card" }, h("h2", {}, "Jobs"), list));
    await this.list(list);
  },
  async form() {
    const running = await api("/api/deployments");
    const refs = [...new Set(running.items.map((r) => `${r.model}:${r.version}`))];
    const model = h("select", { name: "model" }, refs.map((r) => h("option", { value: r }, r)));
    const target = h("input", { name: "target", value: "all", size: 14, title: "all, a group, node names (a,b) or patterns" });
    const folder = h("input", { name: "data", placeholder: "server folder under --data-root", size: 34 });
    const files = h("input", { name: "files", type: "file", multiple: true, accept: "image/*,video/*,.zip,.tar,.tgz,.gz" });
    const out = h("p", { class: "error" });
    const submit = async (e) => {
      e.preventDefault();
      out.textContent = "";
      const options = { model: model.value, target: target.value || "all" };
      try {
        let res;
        if (files.files.length) {
          const body = new FormData();
          body.append("options", JSON.stringify(options));
          for (const f of files.files) body.append("files", f);
          res = await api("/api/jobs/upload", { method: "POST", body });
        } else if (folder.value.trim()) {
          res = await api("/api/jobs", { method: "POST", json: { ...options, data: folder.value.trim() } });
        } else { out.textContent = "Give a server folder or choose files to upload."; return; }
        location.hash = `#/jobs/${res.job}`;
      } catch (err) { out.textContent = err.message; }
    };
    return h("div", { class: "card" }, h("h2", {}, "Start a job"),
      refs.length ? h("form", { class: "inline", id: "job-form", onsubmit: submit },
        h("label", {}, "Model", model), h("label", {}, "Target", target),
        h("label", {}, "Data", folder), h("span", { class: "muted" }, "or"), files,
        h("button", { type: "submit" }, "Start")) : h("p", { class: "muted" }, "Deploy a model first (Models)."),
      out);
  },
  async list(where) {
    const page = await api(`/api/jobs?limit=${PAGE}&offset=${this.page * PAGE}`);
    where.replaceChildren(
      table([
        ["Job", (j) => h("span", { class: "mono" }, j.id)], ["Model", (j) => `${j.model}:${j.version}`],
        ["State", (j) => badge(j.state)], ["Items", (j) => `${j.ok + j.failed} / ${j.items}`],
        ["Progress", (j) => bar(j.items ? Math.round((1000 * (j.ok + j.failed)) / j.items) / 10 : 100, j.state === "complete")],
        ["Failed", (j) => j.failed], ["Started", (j) => ago(j.created)],
      ], page.items, (j) => { location.hash = `#/jobs/${j.id}`; }),
      pager(page, (p) => { this.page = p; this.list(where); }));
  },
  async job(root, id) {
    const j = await api(`/api/jobs/${encodeURIComponent(id)}`);
    const p = j.progress;
    const nodes = Object.keys({ ...p.nodes, ...(j.nodes || {}) }).sort();
    const actions = h("div", { class: "toolbar" },
      h("a", { href: `#/results/${id}` }, "Results gallery ›"),
      canOperate() && j.state === "running" && j.holder ? h("button", { class: "secondary", onclick: () => api(`/api/jobs/${id}/cancel`, { method: "POST" }).catch((e) => alert(e.message)) }, "Cancel") : null,
      canOperate() && j.state === "interrupted" && !j.holder ? h("button", { onclick: () => api(`/api/jobs/${id}/resume`, { method: "POST", json: {} }).catch((e) => alert(e.message)) }, "Resume") : null);
    root.replaceChildren(
      h("h1", {}, "Job ", h("span", { class: "mono" }, id), " ", badge(j.state)),
      h("div", { class: "card", id: "job", "data-job": id, "data-state": j.state, "data-percent": p.percent },
        h("p", {}, `${j.model}:${j.version} on ${j.target} · ${j.strategy} · ${p.done} of ${j.items} items (${p.ok_items} ok, ${p.error_items} errors, ${p.pending} pending)`),
        bar(p.percent, j.state === "complete"),
        actions,
        h("h2", {}, "Per node"),
        table([
          ["Node", (n) => n], ["Items ok", (n) => p.nodes[n]?.ok ?? 0], ["Errors", (n) => p.nodes[n]?.error ?? 0],
          ["Throughput", (n) => (j.nodes?.[n]?.throughput ? `${j.nodes[n].throughput} items/s` : "")],
          ["Shards", (n) => j.nodes?.[n]?.shards ?? ""],
        ], nodes),
        Object.keys(j.skipped_nodes || {}).length ? h("p", { class: "muted" }, `Skipped: ${Object.entries(j.skipped_nodes).map(([k, v]) => `${k} (${v})`).join(", ")}`) : null,
        h("h2", {}, "Errors"),
        j.errors.length ? table([["Item", (e) => e.item], ["Node", (e) => e.node || ""], ["Error", (e) => e.error]], j.errors) : h("p", { class: "muted" }, "None.")));
  },
  onEvent(ev, arg) { return ev.type === "job" && (!arg || ev.data.id === arg); },
};

pages.results = {
  page: 0, label: "", minScore: "",
  async render(root, id) {
    if (!id) {
      const jobs = await api(`/api/jobs?limit=${PAGE}`);
      root.replaceChildren(h("h1", {}, "Results"), h("div", { class: "card" },
        h("p", {}, "Pick a job to see its images with their detections."),
        table([["Job", (j) => h("span", { class: "mono" }, j.id)], ["Model", (j) => `${j.model}:${j.version}`], ["State", (j) => badge(j.state)], ["Items", (j) => j.items]],
          jobs.items, (j) => { location.hash = `#/results/${j.id}`; })));
      return;
    }
    if (this.job !== id) Object.assign(this, { job: id, page: 0, label: "", minScore: "" });
    const labels = await api(`/api/jobs/${encodeURIComponent(id)}/labels`);
    const label = h("select", { id: "label" }, h("option", { value: "" }, "any label"),
      labels.items.map((l) => h("option", { value: l.label, selected: l.label === this.label }, `${l.label} (${l.detections})`)));
    const score = h("input", { id: "min-score", type: "number", min: 0, max: 1, step: 0.05, value: this.minScore, placeholder: "min score" });
    const gallery = h("div");
    const apply = () => { this.label = label.value; this.minScore = score.value; this.page = 0; this.gallery(gallery); };
    label.addEventListener("change", apply); score.addEventListener("change", apply);
    root.replaceChildren(h("h1", {}, "Results of ", h("a", { class: "mono", href: `#/jobs/${id}` }, id)),
      h("div", { class: "toolbar" }, h("label", {}, "Label", label), h("label", {}, "Score ≥", score)), gallery);
    await this.gallery(gallery);
  },
  async gallery(where) {
    const params = new URLSearchParams({ limit: GALLERY, offset: this.page * GALLERY });
    if (this.label) params.set("label", this.label);
    if (this.minScore) params.set("min_score", this.minScore);
    const id = encodeURIComponent(this.job);
    const page = await api(`/api/jobs/${id}/results?${params}`);
    const drawn = [];
    const figures = page.items.map((r) => {
      const canvas = h("canvas", { width: r.width || 320, height: r.height || 240 });
      const boxes = (r.detections || []).map((d) => h("li", { class: "box", "data-label": d.label, "data-score": d.score, "data-box": `${d.x},${d.y},${d.w},${d.h}` },
        `${d.label} ${(d.score * 100).toFixed(0)} % at (${Math.round(d.x)}, ${Math.round(d.y)}, ${Math.round(d.w)}, ${Math.round(d.h)})`));
      drawn.push(this.image(canvas, r));
      return h("figure", { class: "result", "data-item": r.item },
        canvas, h("figcaption", {}, h("b", {}, r.item), " ", badge(r.state), ` ${r.node || ""}`,
          r.error ? h("p", { class: "error" }, r.error) : null,
          boxes.length ? h("ul", {}, boxes) : h("p", { class: "muted" }, r.state === "ok" ? "Nothing detected." : "")));
    });
    where.replaceChildren(h("div", { class: "gallery" }, figures), pager(page, (p) => { this.page = p; this.gallery(where); }));
    await Promise.all(drawn); // the page counts as drawn once its images are
  },
  async image(canvas, r) {
    const ctx = canvas.getContext("2d");
    try {
      const res = await fetch(`/api/jobs/${encodeURIComponent(this.job)}/image?item=${encodeURIComponent(r.item)}`, { headers: { Authorization: `Bearer ${state.token}` } });
      if (!res.ok) throw new Error(res.status);
      const bitmap = await createImageBitmap(await res.blob());
      canvas.width = bitmap.width; canvas.height = bitmap.height;
      ctx.drawImage(bitmap, 0, 0);
    } catch {
      ctx.fillStyle = "#333"; ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.fillStyle = "#ccc"; ctx.fillText("image not available", 10, 20);
    }
    const scale = Math.max(1, canvas.width / 400);
    ctx.lineWidth = 2 * scale;
    ctx.font = `${12 * scale}px sans-serif`;
    for (const d of r.detections || []) {
      const hue = [...d.label].reduce((a, c) => a + c.charCodeAt(0) * 37, 0) % 360;
      ctx.strokeStyle = ctx.fillStyle = `hsl(${hue} 90% 50%)`;
      ctx.strokeRect(d.x, d.y, d.w, d.h);
      const text = `${d.label} ${(d.score * 100).toFixed(0)}%`;
      const tw = ctx.measureText(text).width + 6 * scale;
      ctx.fillRect(d.x, Math.max(0, d.y - 16 * scale), tw, 16 * scale);
      ctx.fillStyle = "#000";
      ctx.fillText(text, d.x + 3 * scale, Math.max(12 * scale, d.y - 4 * scale));
      for (const k of d.keypoints || []) { ctx.fillStyle = "#ff0"; ctx.fillRect(k.x - 2 * scale, k.y - 2 * scale, 4 * scale, 4 * scale); }
    }
  },
  onEvent(ev, arg) { return ev.type === "job" && ev.data.id === arg && ev.data.state === "complete"; },
};

pages.runs = {
  page: 0,
  async render(root, arg) {
    if (arg) return this.run(root, arg);
    const [files, runs] = await Promise.all([api("/api/runconfigs"), api(`/api/runs?limit=${PAGE}&offset=${this.page * PAGE}`)]);
    const out = h("pre", { class: "log", hidden: true });
    const act = (name, what) => async () => {
      out.hidden = false; out.textContent = `${what} ${name}…`;
      try {
        const res = await api(`/api/runconfigs/${encodeURIComponent(name)}/${what}`, { method: "POST", json: {} });
        if (res.run) location.hash = `#/runs/${res.run}`;
        else out.textContent = JSON.stringify(res, null, 2);
      } catch (err) { out.textContent = err.message; }
    };
    root.replaceChildren(h("h1", {}, "Runs"),
      h("div", { class: "card" }, h("h2", {}, `Run-configs in ${files.folder}`),
        files.items.length ? table([["File", (f) => h("span", { class: "mono" }, f.name)], ["Changed", (f) => ago(f.modified)],
          ["", (f) => (canOperate() ? h("span", {}, h("button", { class: "secondary", onclick: act(f.name, "validate") }, "Validate"), " ", h("button", { onclick: act(f.name, "run") }, "Run")) : "")]], files.items)
          : h("p", { class: "muted" }, "No run-config files."), out),
      h("div", { class: "card" }, h("h2", {}, "Runs"),
        table([["Run", (r) => h("span", { class: "mono" }, r.id)], ["File", (r) => r.file], ["State", (r) => badge(r.state)],
          ["Steps", (r) => `${r.steps_ok} ok, ${r.steps_failed} failed of ${r.steps_total}`], ["Started", (r) => ago(r.started)]],
        runs.items, (r) => { location.hash = `#/runs/${r.id}`; }),
        pager(runs, (p) => { this.page = p; render(); })));
  },
  async run(root, id) {
    const r = await api(`/api/runs/${encodeURIComponent(id)}`);
    const hosts = (s) => (s.hosts ? Object.entries(s.hosts).map(([host, o]) => `${host}: ${typeof o === "string" ? o : o.status || JSON.stringify(o)}`).join(" · ") : "");
    root.replaceChildren(h("h1", {}, "Run ", h("span", { class: "mono" }, id), " ", badge(r.state)),
      h("div", { class: "card" }, h("p", {}, `${r.file} · started ${when(r.started)}${r.ended ? ` · ended ${when(r.ended)}` : ""}`),
        table([["#", (s) => s.idx + 1], ["Step", (s) => s.name], ["Kind", (s) => s.kind], ["Target", (s) => s.target || ""],
          ["State", (s) => badge(s.state)], ["Summary", (s) => s.summary || ""], ["Per host", hosts]], r.steps)));
  },
  onEvent(ev, arg) { return ev.type === "run" || (ev.type === "step" && (!arg || ev.data.run_id === arg)); },
};

// ------------------------------------------------------------------ routing, login, live stream

let rendering = null, again = false;

async function render() {
  if (rendering) { again = true; return rendering; }
  const [name, arg] = location.hash.replace(/^#\/?/, "").split("/");
  const page = pages[name] ? name : "fleet";
  state.view = { page, arg: arg ? decodeURIComponent(arg) : null };
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
  const root = document.getElementById("view");
  delete root.dataset.loadMs; // set again once this page is drawn (the tests wait for it)
  rendering = (async () => {
    const started = performance.now();
    try { await pages[page].render(root, state.view.arg); } catch (err) { fail(root, err); }
    root.dataset.page = page;
    root.dataset.loadMs = Math.round(performance.now() - started);
  })();
  await rendering;
  rendering = null;
  if (again) { again = false; await render(); }
}

let pendingRefresh = null;
function refreshSoon() {
  if (pendingRefresh) return;
  pendingRefresh = setTimeout(() => { pendingRefresh = null; render(); }, 150);
}

function onEvent(ev) {
  if (ev.type === "reset") return refreshSoon();
  const view = state.view;
  if (view && pages[view.page].onEvent(ev, view.arg)) refreshSoon();
}

async function stream() {
  const live = document.getElementById("live");
  const controller = new AbortController();
  state.stream = controller;
  while (state.token && !controller.signal.aborted) {
    try {
      const res = await fetch("/api/events", { headers: { Authorization: `Bearer ${state.token}` }, signal: controller.signal });
      if (res.status === 401) return logout("The token was refused: log in again.");
      if (!res.ok) throw new Error(res.status);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let type = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) type = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (!data) continue;
          if (type === "hello") { live.textContent = "live"; live.className = "live on"; refreshSoon(); continue; }
          onEvent({ type, data: JSON.parse(data) });
        }
      }
    } catch (err) {
      if (controller.signal.aborted) return;
    }
    live.textContent = "reconnecting"; live.className = "live off";
    await new Promise((r) => setTimeout(r, 2000));
  }
}

function logout(message) {
  state.token = null; state.me = null;
  sessionStorage.removeItem("evc-token");
  if (state.stream) state.stream.abort();
  showLogin(message || "");
}

function showLogin(message) {
  document.getElementById("login").hidden = false;
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  document.getElementById("view").replaceChildren();
  document.getElementById("login-error").textContent = message;
  const live = document.getElementById("live");
  live.textContent = "offline"; live.className = "live off";
}

async function start() {
  try {
    const res = await fetch("/api/me", { headers: { Authorization: `Bearer ${state.token}` } });
    if (!res.ok) return logout((await res.json()).detail || "The token was refused.");
    state.me = await res.json();
  } catch (err) { return showLogin(err.message); }
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  document.getElementById("who").textContent = `${state.me.name} (${state.me.role})`;
  stream();
  render();
}

document.getElementById("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = document.getElementById("token").value.trim();
  sessionStorage.setItem("evc-token", state.token);
  document.getElementById("token").value = "";
  start();
});
document.getElementById("logout").addEventListener("click", () => logout(""));
window.addEventListener("hashchange", () => state.me && render());
window.addEventListener("resize", () => state.view?.page === "fleet" && refreshSoon());

if (state.token) start(); else showLogin("");
