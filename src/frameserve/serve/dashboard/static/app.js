// The frameserve dashboard: sign-in, one live page at a time, everything through the HTTP API.
// Every text from the server is put in the page with textContent (never parsed as HTML).
"use strict";
(function () {
  const TOKEN_KEY = "frameserve.token";
  const state = { me: null, page: null, abort: null, charts: [] };
  const $ = (id) => document.getElementById(id);

  // -- building the page (text only) -------------------------------------------------------
  function h(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "class") node.className = value;
      else if (key === "value" || key === "checked" || key === "disabled") node[key] = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const fmtBytes = (n) => {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  };
  const fmtSeconds = (s) => {
    if (s === null || s === undefined) return "–";
    s = Math.round(s);
    const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
    return hh ? `${hh}h ${mm}m` : mm ? `${mm}m ${ss}s` : `${ss}s`;
  };
  const fmtNum = (v, digits = 4) => (v === null || v === undefined ? "–" : Number(v).toPrecision(digits));
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const mayRole = (role) => ["artist", "td", "admin"].indexOf(state.me.role) >= ["artist", "td", "admin"].indexOf(role);

  // -- the API -------------------------------------------------------------------------------
  function authHeaders(extra) {
    const headers = Object.assign({}, extra || {});
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    return headers;
  }
  async function api(path, options) {
    options = options || {};
    const response = await fetch(path, Object.assign({}, options, {
      headers: authHeaders(options.headers), cache: "no-store", credentials: "omit",
    }));
    if (response.status === 401 && state.me) signOut("the server no longer takes this token");
    return response;
  }
  async function apiJson(path, options) {
    const response = await api(path, options);
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
    return data;
  }

  // One Server-Sent Events stream per page, read with fetch so that it carries the token.
  async function stream(page, onData, signal) {
    while (!signal.aborted) {
      try {
        const response = await fetch(`/v2/dashboard/events?page=${page}`, {
          headers: authHeaders({ Accept: "text/event-stream" }), signal, cache: "no-store", credentials: "omit",
        });
        if (response.status === 401) { signOut("the server no longer takes this token"); return; }
        if (response.ok) {
          setLive(true);
          const reader = response.body.getReader();
          const decoder = new TextDecoder();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += decoder.decode(value, { stream: true });
            let end;
            while ((end = buffer.indexOf("\n\n")) >= 0) {
              const block = buffer.slice(0, end);
              buffer = buffer.slice(end + 2);
              const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
              if (data) onData(JSON.parse(data));
            }
          }
        }
      } catch (error) {
        if (signal.aborted) return;
      }
      setLive(false);
      await sleep(2000);
    }
  }
  function setLive(live) {
    const dot = $("live");
    if (dot) { dot.textContent = live ? "● live" : "○ reconnecting"; dot.className = live ? "ok" : "dim"; }
  }

  // -- sign-in -------------------------------------------------------------------------------
  async function whoami() {
    const response = await fetch("/v2/dashboard/whoami", { headers: authHeaders(), cache: "no-store", credentials: "omit" });
    if (!response.ok) throw new Error(`the server answered ${response.status}`);
    const me = await response.json();
    return me.user === null ? null : me;
  }
  async function start() {
    $("signin-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
      $("token").value = "";
      const me = await whoami().catch(() => null);
      if (!me) { sessionStorage.removeItem(TOKEN_KEY); $("signin-error").textContent = "That token is not valid here."; return; }
      signedIn(me);
    });
    $("signout").addEventListener("click", () => signOut(""));
    window.addEventListener("hashchange", () => state.me && show(location.hash.slice(1)));
    const me = await whoami().catch(() => null);
    if (me) signedIn(me); else signOut("");
  }
  function signedIn(me) {
    state.me = me;
    $("signin").hidden = true;
    $("nav").hidden = false;
    $("signout").hidden = !me.auth;
    $("who").textContent = me.auth ? `${me.user} (${me.role})` : "no authentication: everyone is admin";
    show(location.hash.slice(1) || "overview");
  }
  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.me = null;
    leavePage();
    $("page").replaceChildren();
    $("nav").hidden = true;
    $("signout").hidden = true;
    $("who").textContent = "";
    $("signin").hidden = false;
    $("signin-error").textContent = message || "";
  }

  // -- pages ---------------------------------------------------------------------------------
  const PAGES = { overview: overviewPage, models: modelsPage, try: tryPage, training: trainingPage };
  function leavePage() {
    if (state.abort) state.abort.abort();
    state.abort = null;
    state.charts.forEach((c) => c.destroy());
    state.charts = [];
  }
  function show(page) {
    if (!PAGES[page]) page = "overview";
    leavePage();
    state.page = page;
    state.abort = new AbortController();
    document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
    const root = $("page");
    root.replaceChildren();
    root.dataset.page = page;
    PAGES[page](root, state.abort.signal);
  }
  function chart(target, title, series, width, lastHour) {
    if (!window.uPlot) return null;
    const hour = () => { const now = Date.now() / 1000; return [now - 3600, now]; };
    const plot = new window.uPlot({
      title, width: width || 520, height: 220,
      scales: { x: lastHour ? { time: true, range: hour } : { time: series[0].time !== false } },
      series: [{ label: series[0].label }].concat(series.slice(1)),
      axes: [{ stroke: "#9aa0a6", grid: { stroke: "#333" } }, { stroke: "#9aa0a6", grid: { stroke: "#333" } }],
    }, series.map(() => []), target);
    state.charts.push(plot);
    return plot;
  }

  // Overview: health, devices, workers, queue, cache, requests per second, latency, recent.
  function overviewPage(root, signal) {
    const cards = h("div", { class: "cards", id: "overview-cards" });
    const rateBox = h("div", { class: "chart" }), latencyBox = h("div", { class: "chart" });
    const workers = h("tbody"), recent = h("tbody", { id: "recent" });
    root.append(
      h("h1", {}, "Overview ", h("span", { id: "live", class: "dim" }, "○ connecting")),
      cards,
      h("h2", {}, "The last hour"),
      h("div", { class: "charts" }, rateBox, latencyBox),
      h("h2", {}, "Workers"),
      h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "model"), h("th", {}, "version"), h("th", {}, "state"), h("th", {}, "now"), h("th", {}, "calls running"), h("th", {}, "process"))), workers),
      h("h2", {}, "Recent requests"),
      h("table", {}, h("thead", {}, h("tr", {}, ["time", "who", "model", "door", "size", "ms", "outcome"].map((t) => h("th", {}, t)))), recent),
    );
    const rate = chart(rateBox, "requests per second (per minute)", [{ label: "time" }, { label: "requests/s", stroke: "#f0a030" }, { label: "errors/s", stroke: "#e05252" }], 520, true);
    const latency = chart(latencyBox, "latency, ms", [{ label: "time" }, { label: "p50", stroke: "#5fb760" }, { label: "p95", stroke: "#4a90d9" }], 520, true);
    const card = (label, value, cls) => h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "big " + (cls || "") }, value));
    stream("overview", (data) => {
      const health = data.health;
      const busy = data.workers.filter((w) => w.activity === "busy").length;
      const idle = data.workers.filter((w) => w.activity === "idle").length;
      const stopped = data.workers.length - busy - idle;
      const device = data.devices[data.devices.length - 1];
      cards.replaceChildren(
        card("health", health.ready ? "ready" : "not ready", health.ready ? "ok" : "bad"),
        card("queue: interactive", data.queue.interactive, "queue-interactive"),
        card("queue: batch", data.queue.batch, "queue-batch"),
        card("workers busy / idle", h("span", { id: "workers-busy-idle" }, `${busy} / ${idle}`)),
        card("models without a worker", stopped),
        card("cache hit rate", data.cache.hit_rate === null ? "–" : `${(100 * data.cache.hit_rate).toFixed(1)} %`),
        card("model memory", fmtBytes(data.model_memory_bytes)),
        card("device", device.kind === "cpu" ? "cpu (the host)" : device.error ? device.error : `${device.name} · ${fmtBytes(device.memory_used_bytes || 0)} of ${fmtBytes(device.memory_total_bytes)}`),
        card("host", `${data.devices[0].cores} cores · ${fmtBytes(data.devices[0].memory_total_bytes)}`),
        card("version · up", `${health.version} · ${fmtSeconds(Date.now() / 1000 - health.started)}`),
      );
      const minutes = data.minutes;
      const xs = minutes.map((m) => m.minute);
      if (rate) rate.setData([xs, minutes.map((m) => m.count / 60), minutes.map((m) => m.errors / 60)]);
      if (latency) latency.setData([xs, minutes.map((m) => m.p50_ms), minutes.map((m) => m.p95_ms)]);
      workers.replaceChildren(...data.workers.map((w) => h("tr", {}, h("td", {}, w.model), h("td", {}, w.version),
        h("td", { class: w.state === "failed" ? "bad" : "" }, w.state), h("td", { class: "activity " + (w.activity === "busy" ? "ok" : "dim"), "data-model": w.model }, w.activity),
        h("td", {}, w.running), h("td", {}, w.worker === null ? "–" : w.worker))));
      recent.replaceChildren(...data.recent.map((r) => h("tr", {},
        h("td", {}, new Date(r.time * 1000).toLocaleTimeString()), h("td", {}, r.user), h("td", { class: "model-name" }, r.model),
        h("td", {}, r.protocol), h("td", { class: "size" }, r.size || "–"), h("td", {}, r.milliseconds.toFixed(1)), h("td", { class: r.outcome === "ok" ? "ok" : "bad" }, r.outcome))));
    }, signal);
  }

  // Models: everything each model declares, its state, reload for admins.
  function modelsPage(root, signal) {
    const list = h("div", { id: "models" });
    root.append(h("h1", {}, "Models ", h("span", { id: "live", class: "dim" }, "○ connecting")), list);
    stream("models", (data) => { list.replaceChildren(...data.models.map(modelCard)); }, signal);
  }
  function modelCard(m) {
    const parts = [h("h3", {}, m.label ? `${m.label} ` : "", h("code", {}, m.name), ` v${m.version} `,
      h("span", { class: m.state === "failed" ? "bad state" : "ok state" }, m.state))];
    if (m.description) parts.push(h("div", { class: "dim" }, m.description));
    if (m.error) parts.push(h("div", { class: "error" }, m.error));
    if (m.state !== "failed") {
      parts.push(h("div", { class: "memory", "data-loaded": m.loaded ? "yes" : "no" }, m.loaded
        ? `loaded · holds ${fmtBytes(m.memory_bytes)}` + (m.model_bytes ? ` (parameters and buffers ${fmtBytes(m.model_bytes)})` : "")
        : "not loaded (set up at its first request)"));
    }
    if (m.inputs) {
      parts.push(h("div", {}, "inputs: ", m.inputs.map((i) => `${i.name} (${i.channels} ch)`).join(", "),
        " · outputs: ", m.outputs.map((o) => `${o.name} (${o.channels} ch)`).join(", ")));
      parts.push(h("div", {}, `colourspace in ${m.colourspace_in} · out ${m.colourspace_out} · tiles: ` +
        (m.spatial.fully_convolutional ? `any size, multiple of ${m.spatial.size_multiple}, overlap ${m.spatial.overlap}` : "whole frame") +
        (m.spatial.max_size ? `, max ${m.spatial.max_size}` : "") + ` · batch ${m.max_batch_size}`));
      const weights = m.weights === null ? "weights not declared" : m.weights.length === 0 ? "no learned weights" :
        m.weights.map((w) => `${w.name}: ${w.licence} (${w.source})${w.commercial ? "" : ", not for commercial use"}${w.note ? " – " + w.note : ""}`).join("; ");
      parts.push(h("div", { class: "weights" }, "weights: ", weights));
      if (m.knobs.length) {
        parts.push(h("table", { class: "knobs" }, h("thead", {}, h("tr", {}, ["knob", "type", "default", "range / choices", "help"].map((t) => h("th", {}, t)))),
          h("tbody", {}, m.knobs.map((k) => h("tr", {}, h("td", {}, k.label || k.name), h("td", {}, k.type), h("td", {}, JSON.stringify(k.default)),
            h("td", {}, k.choices ? k.choices.join(", ") : k.min !== undefined ? `${k.min ?? "–"} … ${k.max ?? "–"}` : ""), h("td", { class: "dim" }, k.help || ""))))));
      }
    }
    if (mayRole("admin")) {
      const note = h("span", { class: "dim" });
      parts.push(h("div", {}, h("button", { type: "button", class: "reload", onclick: async () => {
        note.textContent = "reloading…";
        try {
          const answer = await apiJson(`/v2/repository/models/${encodeURIComponent(m.name)}/load`, { method: "POST" });
          note.textContent = `ready${answer.changes.length ? ": " + answer.changes.join("; ") : ""}`;
        } catch (error) { note.textContent = error.message; }
      } }, "Reload"), " ", note));
    }
    return h("div", { class: "model", "data-model": m.name }, parts);
  }

  // Try a model: pick one, an image, knobs from its specs; run it through the inference API.
  async function tryPage(root) {
    const { models } = await apiJson("/v2/dashboard/models");
    const usable = models.filter((m) => m.state !== "failed" && m.inputs && m.inputs.length);
    const picker = h("select", { id: "try-model" }, usable.map((m) => h("option", { value: m.name }, `${m.label || m.name} (${m.name})`)));
    const form = h("div", { id: "try-form" });
    const results = h("div", { id: "try-results" });
    const status = h("p", { id: "try-status", class: "dim" });
    root.append(h("h1", {}, "Try a model"), h("div", {}, "Model ", picker), form, status, results);
    const render = () => tryForm(usable.find((m) => m.name === picker.value), form, results, status);
    picker.addEventListener("change", render);
    const wanted = usable.find((m) => m.name === "blur");
    if (wanted) picker.value = "blur";
    render();
  }
  function loadImage(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("that file is not an image the browser can read"));
      img.src = src;
    });
  }
  function tryForm(model, form, results, status) {
    form.replaceChildren();
    results.replaceChildren();
    if (!model) { form.append(h("p", {}, "No model can run now.")); return; }
    const images = {};
    const grid = h("div", { class: "form" });
    for (const input of model.inputs) {
      const file = h("input", { type: "file", accept: "image/*", "data-input": input.name });
      file.addEventListener("change", () => { if (file.files[0]) images[input.name] = URL.createObjectURL(file.files[0]); });
      grid.append(h("label", {}, `image ${input.name} (${input.channels} ch)`), h("span", {}, file, " ", h("span", { class: "dim" }, "or the sample photo")));
    }
    const values = {};
    const run = h("button", { type: "button", id: "try-run" }, "Run");
    for (const knob of model.knobs) {
      values[knob.name] = knob.default;
      let control;
      if (knob.type === "bool") {
        control = h("input", { type: "checkbox", checked: !!knob.default, onchange: (e) => { values[knob.name] = e.target.checked; } });
      } else if (knob.type === "choice") {
        control = h("select", { onchange: (e) => { values[knob.name] = e.target.value; } }, knob.choices.map((c) => h("option", { value: c }, c)));
        control.value = knob.default;
      } else if (knob.type === "button") {
        delete values[knob.name];
        control = h("button", { type: "button", onclick: () => go({ [knob.name]: true }) }, knob.label || knob.name);
      } else if ((knob.type === "float" || knob.type === "int") && knob.min !== null && knob.max !== null) {
        const shown = h("span", {}, String(knob.default));
        control = h("span", {}, h("input", { type: "range", min: knob.min, max: knob.max, step: knob.type === "int" ? 1 : (knob.max - knob.min) / 200,
          value: knob.default, "data-knob": knob.name, oninput: (e) => {
            values[knob.name] = knob.type === "int" ? parseInt(e.target.value, 10) : parseFloat(e.target.value);
            shown.textContent = e.target.value;
          } }), " ", shown);
      } else if (knob.type === "float" || knob.type === "int") {
        control = h("input", { type: "number", value: knob.default, step: knob.type === "int" ? 1 : "any", onchange: (e) => {
          values[knob.name] = knob.type === "int" ? parseInt(e.target.value, 10) : parseFloat(e.target.value);
        } });
      } else {
        control = h("input", { type: "text", value: knob.default, onchange: (e) => { values[knob.name] = e.target.value; } });
      }
      grid.append(h("label", {}, knob.label || knob.name), control);
      if (knob.help) grid.append(h("div", { class: "help" }, knob.help));
    }
    form.append(grid, run);
    async function go(extra) {
      run.disabled = true;
      status.textContent = "running…";
      try {
        const sources = {};
        for (const input of model.inputs) sources[input.name] = await loadImage(images[input.name] || "/ui/sample.png");
        const started = performance.now();
        const answer = await infer(model, sources, Object.assign({}, values, extra || {}));
        status.textContent = `${model.name}: ${(performance.now() - started).toFixed(0)} ms through POST /v2/models/${model.name}/infer`;
        showResults(model, answer, results);
      } catch (error) {
        status.textContent = error.message;
        status.className = "error";
      } finally { run.disabled = false; }
    }
    run.addEventListener("click", () => go());
  }
  function pixelsOf(img) {
    const canvas = h("canvas", { width: img.naturalWidth, height: img.naturalHeight });
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(img, 0, 0);
    return { canvas, rgba: context.getImageData(0, 0, canvas.width, canvas.height).data, width: canvas.width, height: canvas.height };
  }
  async function infer(model, sources, knobs) {
    const inputs = [], blobs = [];
    let first = null;
    for (const input of model.inputs) {
      const image = pixelsOf(sources[input.name]);
      first = first || image;
      const c = input.channels, count = image.width * image.height;
      const data = new Float32Array(count * c);
      for (let p = 0; p < count; p++) for (let k = 0; k < c; k++) data[p * c + k] = k < 4 ? image.rgba[p * 4 + k] / 255 : 0;
      inputs.push({ name: input.name, datatype: "FP32", shape: [image.height, image.width, c], parameters: { binary_data_size: data.byteLength } });
      blobs.push(data);
    }
    const header = new TextEncoder().encode(JSON.stringify({
      inputs, parameters: Object.assign({ colourspace: "srgb", binary_data_output: true }, knobs),
    }));
    const response = await api(`/v2/models/${encodeURIComponent(model.name)}/infer`, {
      method: "POST", body: new Blob([header, ...blobs]),
      headers: { "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": String(header.length) },
    });
    const bytes = new Uint8Array(await response.arrayBuffer());
    const headerLength = parseInt(response.headers.get("Inference-Header-Content-Length") || String(bytes.length), 10);
    const answer = JSON.parse(new TextDecoder().decode(bytes.subarray(0, headerLength)));
    if (!response.ok) throw new Error(answer.error || `${response.status}`);
    let offset = headerLength;
    const outputs = [];
    let objects = [];
    for (const out of answer.outputs) {
      if (out.name === "objects") { objects = out.data.map((d) => JSON.parse(d)); continue; }
      const size = out.parameters.binary_data_size;
      const floats = new Float32Array(bytes.slice(offset, offset + size).buffer);
      offset += size;
      outputs.push({ name: out.name, height: out.shape[0], width: out.shape[1], channels: out.shape[2], data: floats });
    }
    return { input: first, outputs, objects };
  }
  function toCanvas(out) {
    const canvas = h("canvas", { width: out.width, height: out.height, class: "result", "data-output": out.name });
    const context = canvas.getContext("2d");
    const image = context.createImageData(out.width, out.height);
    const c = out.channels, byte = (v) => Math.round(Math.min(1, Math.max(0, v)) * 255);
    for (let p = 0; p < out.width * out.height; p++) {
      const r = out.data[p * c], g = c > 1 ? out.data[p * c + 1] : r, b = c > 2 ? out.data[p * c + 2] : c > 1 ? 0 : r;
      image.data[p * 4] = byte(r); image.data[p * 4 + 1] = byte(g); image.data[p * 4 + 2] = byte(b); image.data[p * 4 + 3] = 255;
    }
    context.putImageData(image, 0, 0);
    return canvas;
  }
  function drawObjects(objects, width, height) {
    const overlay = h("canvas", { width, height, class: "overlay" });
    const g = overlay.getContext("2d");
    g.lineWidth = Math.max(1, width / 300);
    g.strokeStyle = g.fillStyle = "#f0a030";
    g.font = `${Math.max(10, width / 50)}px sans-serif`;
    for (const object of objects) {
      for (const record of object.records || []) {
        for (const [key, value] of Object.entries(record)) {
          if (key.endsWith("_nuke") || !Array.isArray(value)) continue;
          if (value.length === 4 && (key === "box" || key === "bbox") && value.every((v) => typeof v === "number")) {
            g.strokeRect(value[0], value[1], value[2] - value[0], value[3] - value[1]);
            const tag = record.label !== undefined ? String(record.label) : record.score !== undefined ? Number(record.score).toFixed(2) : object.name;
            g.fillText(tag, value[0], Math.max(10, value[1] - 3));
          } else if (value.length === 2 && value.every((v) => typeof v === "number")) {
            g.fillRect(value[0] - 2, value[1] - 2, 4, 4);
          } else if (value.every((v) => Array.isArray(v) && v.length === 2)) {
            value.forEach(([x, y]) => g.fillRect(x - 2, y - 2, 4, 4));
          }
        }
      }
    }
    return overlay;
  }
  function showResults(model, answer, results) {
    results.replaceChildren();
    if (!answer.outputs.length) { results.append(h("pre", {}, JSON.stringify(answer.objects, null, 1))); return; }
    const chooser = h("select", { id: "try-output" }, answer.outputs.map((o, i) => h("option", { value: i }, o.name)));
    const area = h("div");
    const render = () => {
      const out = answer.outputs[Number(chooser.value)];
      const input = answer.input;
      const inputView = h("div", { class: "view" }, input.canvas, drawObjects(answer.objects, input.width, input.height));
      const result = toCanvas(out);
      const slider = h("input", { type: "range", min: 0, max: 100, value: 50, id: "wipe" });
      const bottom = h("canvas", { width: out.width, height: out.height });
      bottom.getContext("2d").drawImage(input.canvas, 0, 0, out.width, out.height);
      const top = toCanvas(out);
      top.classList.add("top");
      const clip = () => { top.style.clipPath = `inset(0 0 0 ${slider.value}%)`; };
      slider.addEventListener("input", clip);
      clip();
      const download = h("button", { type: "button", id: "try-exr", onclick: () => {
        const bytes = window.writeExr(out.width, out.height, out.channels, out.data);
        const link = h("a", { href: URL.createObjectURL(new Blob([bytes], { type: "image/x-exr" })), download: `${model.name}_${out.name}.exr` });
        document.body.append(link); link.click(); link.remove();
      } }, "Download EXR (32-bit float)");
      area.replaceChildren(
        h("h2", {}, "Side by side: input (objects drawn) | result"),
        h("div", { class: "row" }, inputView, h("div", { class: "view" }, result)),
        h("h2", {}, "Wipe: input left, result right"), slider,
        h("div", {}, h("div", { class: "wipe" }, bottom, top)),
        h("p", {}, download, " ", h("span", { class: "dim" }, `${out.width}×${out.height}, ${out.channels} channels, values as the API answered (sRGB)`)),
      );
      if (answer.objects.length) area.append(h("h2", {}, "Objects"), h("pre", { id: "try-objects" }, JSON.stringify(answer.objects, null, 1)));
    };
    chooser.addEventListener("change", render);
    results.append(h("div", {}, "Output ", chooser), area);
    render();
  }

  // Training: jobs, loss curves, contact sheets, actions, and a new job from uploaded pairs.
  function trainingPage(root, signal) {
    const table = h("tbody", { id: "jobs" });
    const detail = h("div", { id: "job-detail" });
    root.append(
      h("h1", {}, "Training ", h("span", { id: "live", class: "dim" }, "○ connecting")),
      h("table", {}, h("thead", {}, h("tr", {}, ["job", "owner", "state", "progress", "steps/s", "ETA", "loss", "validation"].map((t) => h("th", {}, t)))), table),
      detail, newJobForm(),
    );
    let selected = null, plot = null, sheetStep = -1, lastSheetFetch = 0;
    let points = new Map();  // the selected job's curve by step: its saved history, then live
    const draw = () => {
      const curve = [...points.values()].sort((a, b) => a[0] - b[0]);
      lossBox.dataset.points = String(curve.length);
      if (plot) plot.setData([curve.map((p) => p[0]), curve.map((p) => p[1]), curve.map((p) => p[2])]);
    };
    const loadLosses = (name) => {  // the whole curve the server kept, joined to the live points
      apiJson(`/v2/training/jobs/${encodeURIComponent(name)}/losses`).then((data) => {
        if (name !== selected) return;
        for (const p of data.points) if (!points.has(p[0])) points.set(p[0], p);
        lossBox.dataset.loaded = "true";
        draw();
      }).catch(() => {});
    };
    const lossBox = h("div", { class: "chart", id: "loss-chart" });
    const sheet = h("img", { class: "sheet", alt: "contact sheet" });  // hidden (CSS) until it has a picture
    const noSheet = h("p", { class: "dim", id: "no-sheet" }, "No contact sheet yet.");
    const earlier = h("div", { class: "row", id: "earlier-sheets" });
    const info = h("div");
    const actions = h("div");
    let last = null;  // the newest data: a click shows its job at once, not at the next change
    const render = (data) => {
      table.replaceChildren(...data.jobs.map((job) => h("tr", { class: job.name === selected ? "selected" : "", "data-job": job.name, onclick: () => { selected = job.name; sheetStep = -1; plot = null; detail.replaceChildren(); earlier.replaceChildren(); sheet.removeAttribute("src"); render(last); } },
        h("td", {}, job.name), h("td", {}, job.owner), h("td", { class: job.state === "failed" ? "bad" : "" }, job.state),
        h("td", {}, h("progress", { max: job.total_steps, value: job.step }), ` ${job.step}/${job.total_steps}`),
        h("td", {}, job.steps_per_second.toFixed(1)), h("td", {}, fmtSeconds(job.eta_seconds)), h("td", {}, fmtNum(job.loss)), h("td", {}, fmtNum(job.validation_loss)))));
      if (!selected && data.jobs.length) selected = data.jobs[0].name;
      const job = data.jobs.find((j) => j.name === selected);
      if (!job) { detail.replaceChildren(); return; }
      if (!plot) {
        lossBox.replaceChildren();
        detail.replaceChildren(h("h2", {}, `Job ${job.name}`), info, actions, lossBox, h("h2", {}, "Newest contact sheet (input | prediction | target)"), noSheet, sheet, h("h2", {}, "Earlier ones"), earlier);
        state.charts.forEach((c) => c.destroy());
        state.charts = [];
        plot = chart(lossBox, "loss by step", [{ label: "step", time: false }, { label: "training", stroke: "#f0a030" }, { label: "validation", stroke: "#4a90d9" }], 640);
        points = new Map();
        delete lossBox.dataset.loaded;
        loadLosses(job.name);
      }
      for (const p of job.curve) points.set(p[0], p);
      draw();
      const settings = Object.entries(job.settings || {});
      info.replaceChildren(h("div", { class: "dim" }, `${job.kind} job on ${job.device} · model ${job.model_id} · ${fmtSeconds(job.elapsed_seconds)} trained · checkpoints: ${job.checkpoints.join(", ") || "none"}`),
        h("div", { class: "error" }, job.error || ""),
        settings.length ? h("div", { id: "job-settings" }, h("h3", {}, "Settings"),
          h("table", { class: "settings" }, h("tbody", {}, settings.map(([key, value]) => h("tr", { "data-setting": key },
            h("td", {}, key), h("td", {}, value === null ? "–" : typeof value === "object" ? JSON.stringify(value) : String(value))))))) : null);
      actions.replaceChildren(...jobActions(job));
      noSheet.hidden = job.has_contact_sheet || Boolean(sheet.getAttribute("src"));
      const now = Date.now();
      if (job.has_contact_sheet && job.step !== sheetStep && now - lastSheetFetch > 3000) {
        sheetStep = job.step;
        lastSheetFetch = now;
        const step = job.step;
        api(`/v2/training/jobs/${encodeURIComponent(job.name)}/contact_sheet`).then((r) => (r.ok ? r.blob() : null)).then((blob) => {
          if (!blob) return;
          if (sheet.src) {  // the one shown moves to the strip of earlier sheets (8 at most)
            earlier.prepend(h("figure", {}, h("img", { src: sheet.src, class: "sheet small", alt: sheet.alt }), h("figcaption", { class: "dim" }, sheet.alt)));
            while (earlier.children.length > 8) { URL.revokeObjectURL(earlier.lastChild.querySelector("img").src); earlier.lastChild.remove(); }
          }
          sheet.src = URL.createObjectURL(blob);
          sheet.alt = `seen at step ${step}`;
        });
      }
    };
    stream("training", (data) => { last = data; render(data); }, signal);
  }
  function jobActions(job) {
    const mine = job.owner === state.me.user || mayRole("td");
    if (!mine) return [];
    const note = h("span", { class: "dim" });
    const act = (label, method, path, cls) => h("button", { type: "button", class: cls || "", "data-action": label.toLowerCase(), onclick: async () => {
      note.textContent = `${label.toLowerCase()}…`;
      try { await apiJson(`/v2/training/jobs/${encodeURIComponent(job.name)}${path}`, { method }); note.textContent = "done"; } catch (error) { note.textContent = error.message; }
    } }, label);
    const buttons = [];
    if (job.state === "running" || job.state === "queued") buttons.push(act("Cancel", "POST", "/cancel"));
    if (job.state === "cancelled" || job.state === "failed" || job.state === "done") buttons.push(act("Resume", "POST", "/resume"));
    if (job.state !== "running" && job.state !== "queued") buttons.push(act("Delete", "DELETE", "", "danger"));
    if (mayRole("td") && job.checkpoints.length) {
      buttons.push(h("button", { type: "button", "data-action": "export", onclick: async () => {
        const response = await api(`/v2/training/jobs/${encodeURIComponent(job.name)}/package`);
        if (!response.ok) { note.textContent = (await response.json().catch(() => ({}))).error || String(response.status); return; }
        const link = h("a", { href: URL.createObjectURL(await response.blob()), download: `${job.name}.zip` });
        document.body.append(link); link.click(); link.remove();
      } }, "Export package"));
    }
    return buttons.flatMap((b) => [b, " "]).concat([note]);
  }
  function newJobForm() {
    const name = h("input", { type: "text", id: "job-name", placeholder: "degrain" });
    const inputs = h("input", { type: "file", id: "job-inputs", multiple: true, accept: "image/*,.exr,.tif,.tiff,.dpx" });
    const targets = h("input", { type: "file", id: "job-targets", multiple: true, accept: "image/*,.exr,.tif,.tiff,.dpx" });
    const steps = h("input", { type: "number", id: "job-steps", value: 2000, min: 1 });
    const crop = h("input", { type: "number", id: "job-crop", value: 64, min: 8 });
    const sheets = h("input", { type: "number", id: "job-sheets", value: 500, min: 0 });
    const note = h("p", { class: "dim", id: "job-note" });
    const upload = async (file) => {
      const answer = await apiJson(`/v2/training/uploads?filename=${encodeURIComponent(file.name)}`, { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
      return { upload: answer.id };
    };
    const submit = h("button", { type: "button", id: "job-start", onclick: async () => {
      try {
        const ins = [...inputs.files].sort((a, b) => a.name.localeCompare(b.name));
        const outs = [...targets.files].sort((a, b) => a.name.localeCompare(b.name));
        if (!ins.length || ins.length !== outs.length) throw new Error("choose as many target frames as input frames (paired by name order)");
        note.textContent = `uploading ${ins.length * 2} frames…`;
        const pairs = [];
        for (let i = 0; i < ins.length; i++) pairs.push([await upload(ins[i]), await upload(outs[i])]);
        const settings = { steps: parseInt(steps.value, 10), crop_size: parseInt(crop.value, 10), contact_sheet_interval: parseInt(sheets.value, 10) };
        const job = await apiJson("/v2/training/jobs", { method: "POST", body: JSON.stringify({ name: name.value.trim(), pairs, settings }), headers: { "Content-Type": "application/json" } });
        note.textContent = `job ${job.name} ${job.state}`;
      } catch (error) { note.textContent = error.message; }
    } }, "Start training");
    return h("div", {}, h("h2", {}, "Start a job from frame pairs"),
      h("div", { class: "form" }, h("label", {}, "name"), name, h("label", {}, "input frames"), inputs, h("label", {}, "target frames"), targets,
        h("label", {}, "steps"), steps, h("label", {}, "crop size"), crop, h("label", {}, "contact sheet every (steps)"), sheets), submit, note);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
