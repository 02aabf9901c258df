// The managers' dashboard: KPI tiles and charts (Chart.js), the open queue, a timeline.
"use strict";

const charts = {};
const form = document.getElementById("filters");

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin" });
  if (response.status === 401) { location.href = "/dashboard/login"; throw new Error("signed out"); }
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function query() {
  const params = new URLSearchParams();
  for (const [key, value] of new FormData(form)) if (value) params.set(key, value);
  return params.toString();
}

function minutes(value) {
  if (value === null || value === undefined) return "—";
  if (value < 60) return `${Math.round(value)} min`;
  return `${Math.floor(value / 60)} h ${String(Math.round(value % 60)).padStart(2, "0")} min`;
}

function share(value) {
  return value === null || value === undefined ? "—" : `${(value * 100).toFixed(1)} %`;
}

function tile(label, value, note, met) {
  const element = document.createElement("div");
  element.className = "tile" + (met === true ? " met" : met === false ? " missed" : "");
  element.innerHTML = '<div class="label"></div><div class="value"></div><div class="note"></div>';
  element.querySelector(".label").textContent = label;
  element.querySelector(".value").textContent = value;
  element.querySelector(".note").textContent = note;
  return element;
}

function draw(id, type, labels, datasets, options = {}) {
  if (charts[id]) charts[id].destroy();
  charts[id] = new Chart(document.getElementById(id), {
    type, data: { labels, datasets },
    options: { responsive: true, animation: false, ...options },
  });
}

function renderKpis(k) {
  const tiles = document.getElementById("tiles");
  tiles.replaceChildren(
    tile("Conversations", String(k.conversations.total), `${k.conversations.resolved} resolved`),
    tile("First response (median)", minutes(k.first_response.working_minutes.median),
         `working time · p90 ${minutes(k.first_response.working_minutes.p90)} · wall ${minutes(k.first_response.wall_minutes.median)}`),
    tile("Resolution (median)", minutes(k.resolution.working_minutes.median),
         `working time · wall ${minutes(k.resolution.wall_minutes.median)}`),
    tile("SLA breach rate", share(k.sla.all.breach_rate),
         `${k.sla.all.breached} breached · ${k.sla.all.met} met`),
    tile("Satisfaction (4–5)", share(k.satisfaction.share),
         `target ${share(k.satisfaction.target)} · ${k.satisfaction.ratings} ratings`,
         k.targets.satisfaction_share.met),
    tile("Dispute resolution", k.disputes.average_working_days === null ? "—"
         : `${k.disputes.average_working_days.toFixed(2)} days`,
         `working days · target ≤ ${k.disputes.target}`, k.targets.dispute_resolution_working_days.met),
    tile("On-time delivery", share(k.delivery.share),
         `target ${share(k.delivery.target)} · ${k.delivery.delivered} delivered`,
         k.targets.on_time_delivery_share.met),
    tile("Top complaints", k.complaints.top_categories.map(c => `${c.category} (${c.count})`).join(", ") || "—",
         `${k.complaints.total} complaints`),
  );
  const kinds = Object.keys(k.sla).filter(kind => kind !== "all");
  draw("chart-sla", "bar", kinds, [
    { label: "met", data: kinds.map(kind => k.sla[kind].met), backgroundColor: "#2e7d32" },
    { label: "breached", data: kinds.map(kind => k.sla[kind].breached), backgroundColor: "#c62828" },
  ], { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } });
  const channels = Object.keys(k.conversations.by_channel);
  draw("chart-channels", "bar", channels,
       [{ label: "conversations", data: channels.map(c => k.conversations.by_channel[c]), backgroundColor: "#1565c0" }]);
  const languages = Object.keys(k.conversations.by_language);
  draw("chart-languages", "doughnut", languages,
       [{ data: languages.map(l => k.conversations.by_language[l]) }]);
  const owners = Object.keys(k.owners);
  draw("chart-owners", "bar", owners, [
    { label: "open", data: owners.map(o => k.owners[o].open_owned), backgroundColor: "#ef6c00" },
    { label: "resolved", data: owners.map(o => k.owners[o].resolved), backgroundColor: "#2e7d32" },
  ]);
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text ?? "—";
  row.appendChild(td);
}

function renderQueue(queue) {
  const body = document.querySelector("#queue tbody");
  body.replaceChildren();
  for (const c of queue.conversations) {
    const row = document.createElement("tr");
    row.dataset.id = c.id;
    if (c.overdue) row.className = "overdue";
    cell(row, `#${c.id}`);
    cell(row, c.customer);
    cell(row, `${c.channel}:${c.chat}`);
    cell(row, c.status);
    cell(row, c.priority);
    cell(row, c.owner);
    cell(row, c.next_deadline ? `${new Date(c.next_deadline).toLocaleString()} (${c.next_clock})` : null);
    row.addEventListener("click", () => showTimeline(c.id));
    body.appendChild(row);
  }
}

async function showTimeline(id) {
  const data = await api(`/dashboard/api/conversations/${id}`);
  document.getElementById("timeline").hidden = false;
  const c = data.conversation;
  document.getElementById("timeline-title").textContent =
    `#${c.id} · ${c.channel}:${c.chat} · ${c.status} · owner ${c.owner ?? "—"}`;
  const list = document.getElementById("timeline-events");
  list.replaceChildren();
  for (const e of data.events) {
    const item = document.createElement("li");
    item.className = e.type + (e.direction ? ` ${e.direction}` : "");
    const time = document.createElement("time");
    time.textContent = e.at ? new Date(e.at).toLocaleString() : "";
    item.appendChild(time);
    let text;
    if (e.type === "message") text = `${e.sender}${e.agent ? " " + e.agent : ""} → ${e.audience}: ${e.text}`;
    else if (e.type === "ownership") text = `${e.agent} ${e.action}${e.target ? " → " + e.target : ""}${e.ok ? "" : " (refused: " + e.reason + ")"}`;
    else text = `SLA ${e.clock}: ${e.status}, due ${e.deadline ? new Date(e.deadline).toLocaleString() : "—"}` +
      (e.working_minutes !== null ? `, ${minutes(e.working_minutes)} working time` : "");
    item.appendChild(document.createTextNode(text));
    list.appendChild(item);
  }
}

async function fillOptions() {
  const options = await api("/dashboard/api/options");
  for (const name of ["channel", "language", "owner"]) {
    const select = form.elements[name];
    for (const value of options[name + "s"]) {
      const option = document.createElement("option");
      option.value = option.textContent = value;
      select.appendChild(option);
    }
  }
}

async function refresh() {
  const [kpis, queue] = await Promise.all([api(`/dashboard/api/kpis?${query()}`), api("/dashboard/api/queue")]);
  renderKpis(kpis);
  renderQueue(queue);
  document.body.dataset.loaded = "true";
}

form.addEventListener("submit", event => { event.preventDefault(); refresh(); });

(async () => {
  const me = await api("/dashboard/api/me");
  document.getElementById("me").textContent = me.name;
  await fillOptions();
  await refresh();
})();
