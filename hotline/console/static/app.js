// 12345 console: one page, no build step, no third-party code. Every visible string
// comes from the message catalogue (/console/i18n/<lang>.json) through t().
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const LANGS = ["zh-CN", "en"];
const KINDS = ["consultation", "request", "complaint", "report", "suggestion", "praise"];
const URGENCIES = ["normal", "urgent", "emergency"];
const CHANNELS = ["phone", "wechat", "app", "web", "walk_in", "email", "telegram", "open311"];
const LINES = ["110", "119", "120", "122"];
const VIEWS_BY_ROLE = {
  agent: ["workspace", "kb"],
  supervisor: ["workspace", "kb", "wall", "report"],
  department: ["inbox", "kb", "report"],
  admin: ["kb", "wall", "report", "staff"],
};
// The phone line's HTTP API (hotline/acd, see /work notes acd_api); absent until routed.
const ACD = {
  me: "/api/v1/agents/me",
  login: "/api/v1/agents/me/login",
  logout: "/api/v1/agents/me/logout",
  state: "/api/v1/agents/me/state",
  call: (uuid, action) => `/api/v1/calls/${encodeURIComponent(uuid)}${action ? "/" + action : ""}`,
};

let MSG = {};
let LANG = "zh-CN";
let CONFIG = null;
let CATALOG = { departments: [], categories: [] };
let PHONE = null; // the ACD's view of me, or null when the phone line is not connected
const SCREEN_POPS = new Map(); // call uuid -> what the ACD told us about the caller as it rang
let feed = null;
let selectedKey = null;
let lastAnswerTarget = null;
let kbHits = [];
let dispatchContext = null;
let inboxSelected = null;
let kbEditing = null;
let currentView = null;
let pendingG = false;

// ---------------------------------------------------------------- i18n

function t(key, params = {}) {
  let s = Object.prototype.hasOwnProperty.call(MSG, key) ? MSG[key] : key;
  for (const [k, v] of Object.entries(params)) s = s.split(`{${k}}`).join(String(v));
  return s;
}

async function loadLang(lang) {
  const r = await fetch(`/console/i18n/${lang}.json`, { credentials: "same-origin" });
  MSG = await r.json();
  LANG = lang;
  document.documentElement.lang = lang;
  localStorage.setItem("console.lang", lang);
  applyI18n();
}

function applyI18n(root = document) {
  for (const el of $$("[data-i18n]", root)) el.textContent = t(el.dataset.i18n);
  for (const el of $$("[data-i18n-attr]", root)) {
    for (const pair of el.dataset.i18nAttr.split(";")) {
      const [attr, key] = pair.split(":");
      el.setAttribute(attr, t(key));
    }
  }
  document.title = t("app.title");
}

// ---------------------------------------------------------------- helpers

async function api(method, path, body, headers = {}) {
  const init = { method, credentials: "same-origin", headers: { ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (r.status === 204) return null;
  const ctype = r.headers.get("Content-Type") || "";
  const data = ctype.includes("json") ? await r.json() : null;
  if (!r.ok) {
    const err = new Error(problemText(data, r.status));
    err.status = r.status;
    err.problem = data;
    throw err;
  }
  return data;
}

function problemText(p, status) {
  if (!p) return t("err.http", { status });
  let s = p.detail || p.title || t("err.http", { status });
  if (Array.isArray(p.errors) && p.errors.length) {
    s += " — " + p.errors.map((e) => `${e.field}: ${e.message}`).join("; ");
  }
  return s;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function toast(text, bad = false) {
  const node = el("div", { class: bad ? "toast bad" : "toast", text });
  $("#toasts").append(node);
  setTimeout(() => node.remove(), bad ? 8000 : 4000);
}

function fmtTime(iso) {
  if (!iso) return "—";
  return new Date(iso).toLocaleString(LANG, {
    timeZone: CONFIG ? CONFIG.timezone : undefined,
    month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
  });
}

function fmtDur(ms) {
  const neg = ms < 0;
  let s = Math.floor(Math.abs(ms) / 1000);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  const pad = (n) => String(n).padStart(2, "0");
  const core = (d ? `${d}${t("unit.day")} ` : "") + `${pad(h)}:${pad(m)}:${pad(s)}`;
  return neg ? `-${core}` : core;
}

function label(prefix, value) {
  if (value === null || value === undefined || value === "") return "—";
  const key = `${prefix}.${value}`;
  return Object.prototype.hasOwnProperty.call(MSG, key) ? MSG[key] : value;
}

function deptName(code) {
  const d = CATALOG.departments.find((x) => x.code === code);
  return d ? d.name : code || "—";
}

function catName(code) {
  const c = CATALOG.categories.find((x) => x.code === code);
  return c ? c.name : code || "—";
}

function typing(target) {
  return target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

function uuid() {
  return crypto.randomUUID ? crypto.randomUUID()
    : Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---------------------------------------------------------------- overlays

let overlayReturn = null;

function openOverlay(id) {
  overlayReturn = document.activeElement;
  const o = $(id);
  o.hidden = false;
  const first = $("select, input, textarea, button", o);
  if (first) first.focus();
}

function closeOverlay(o) {
  o.hidden = true;
  if (overlayReturn && overlayReturn.focus) overlayReturn.focus();
}

function confirmAction(text) {
  return new Promise((resolve) => {
    $("#confirm-text").textContent = text;
    const o = $("#confirm");
    const yes = $("#confirm-yes");
    const done = (v) => {
      yes.removeEventListener("click", onYes);
      o.removeEventListener("close-overlay", onNo);
      closeOverlay(o);
      resolve(v);
    };
    const onYes = () => done(true);
    const onNo = () => done(false);
    yes.addEventListener("click", onYes);
    o.addEventListener("close-overlay", onNo);
    openOverlay("#confirm");
    $("#confirm .link").focus();  // the safe choice has the focus
  });
}

// ---------------------------------------------------------------- the live feed

class Feed {
  // Holds the queue items of this user; see hotline/console/README.md for the protocol.
  constructor(onChange) {
    this.items = new Map();
    this.instance = null;
    this.seq = 0;
    this.onChange = onChange;
    this.backoff = 500;
    this.stopped = false;
  }

  connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    let url = `${proto}://${location.host}/api/v1/console/ws`;
    if (this.instance) url += `?instance=${encodeURIComponent(this.instance)}&after=${this.seq}`;
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => { this.backoff = 500; setLive(true); };
    ws.onmessage = (m) => this.onFrame(JSON.parse(m.data));
    ws.onclose = (ev) => {
      setLive(false);
      if (this.stopped) return;
      if (ev.code === 1008) { showLogin(); return; }  // signed out elsewhere
      setTimeout(() => this.connect(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 5000);
    };
    this.pinger = this.pinger || setInterval(() => {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send("ping");
    }, 25000);
  }

  stop() {
    this.stopped = true;
    if (this.ws) this.ws.close();
    clearInterval(this.pinger);
  }

  onFrame(f) {
    if (f.type === "snapshot") {
      this.items = new Map(f.items.map((i) => [i.key, i]));
      this.instance = f.instance;
      this.seq = f.seq;
    } else if (f.type === "resume") {
      this.apply(f.events);
      this.seq = Math.max(this.seq, f.seq);
    } else if (f.type === "events") {
      this.apply(f.events);
    } else if (f.type === "alert") {
      showAlert(f.alert);
      return;
    } else if (f.type === "screen_pop") {
      SCREEN_POPS.set(f.uuid, f);
      refreshPhone();
      return;
    } else if (f.type === "agent_state") {
      refreshPhone();
      return;
    } else {
      return;
    }
    this.onChange(f);
  }

  apply(events) {
    for (const e of events) {
      if (e.seq <= this.seq) continue;  // already in the snapshot
      this.seq = e.seq;
      if (e.op === "remove" || !e.item) this.items.delete(e.key);
      else this.items.set(e.key, e.item);
    }
  }

  sorted() {
    return Array.from(this.items.values()).sort((a, b) =>
      Number(!!b.emergency) - Number(!!a.emergency)
      || a.priority - b.priority
      || (a.due_at === null) - (b.due_at === null)
      || (a.due_at || "").localeCompare(b.due_at || "")
      || (a.since || "").localeCompare(b.since || "")
      || a.key.localeCompare(b.key));
  }
}

function setLive(up) {
  const live = $("#live");
  live.textContent = up ? t("live.up") : t("live.down");
  live.classList.toggle("down", !up);
}

// ---------------------------------------------------------------- queue

function renderQueue() {
  const list = $("#queue");
  const items = feed.sorted().filter((i) => !i.audience.startsWith("dept:"));
  $("#queue-count").textContent = `(${items.length})`;
  $("#queue-empty").hidden = items.length > 0;
  list.replaceChildren(...items.map((i) => {
    const classes = [i.emergency ? "emergency" : "", i.risk === "warning" ? "risk-warning" : ""];
    const li = el("li", {
      role: "option", "data-key": i.key, "aria-selected": String(i.key === selectedKey),
      class: classes.join(" ").trim(), onclick: () => selectItem(i.key, true),
    },
    el("div", { class: "row1" },
      i.emergency ? el("span", { class: "badge emergency", text: t("queue.emergency") }) : null,
      el("span", { class: "badge", text: label("itemkind", i.kind) }),
      el("span", { class: "title", text: i.title || i.ref }),
      i.emergency && (i.emergency_lines || i.alert) ? el("span", { class: "badge emergency",
        text: (i.emergency_lines || (i.alert && i.alert.lines) || []).join("/") }) : null),
    el("div", { class: "row2" },
      el("span", { text: label("channel", i.channel) }),
      el("span", { text: label("action", i.action) }),
      el("span", { text: t("queue.wait") + " " }, el("span", { class: "wait", "data-since": i.since || "" })),
      i.due_at ? el("span", { text: t("queue.due") + " " },
        el("span", { class: "countdown", "data-due": i.due_at })) : null,
      i.risk === "breached" ? el("span", { class: "badge over", text: t("risk.breached") }) : null,
      i.risk === "warning" ? el("span", { class: "badge warn", text: t("risk.warning") }) : null));
    return li;
  }));
  tickClocks();
}

function tickClocks() {
  const now = Date.now();
  for (const s of $$(".wait[data-since]")) {
    if (s.dataset.since) s.textContent = fmtDur(now - Date.parse(s.dataset.since));
  }
  for (const s of $$(".countdown[data-due]")) {
    const left = Date.parse(s.dataset.due) - now;
    s.textContent = fmtDur(left);
    s.classList.toggle("over", left < 0);
    const li = s.closest("li");
    if (li) li.classList.toggle("overdue", left < 0);
  }
}

function moveSelection(delta) {
  const keys = $$("#queue li").map((li) => li.dataset.key);
  if (!keys.length) return;
  const at = keys.indexOf(selectedKey);
  const next = keys[Math.max(0, Math.min(keys.length - 1, at === -1 ? 0 : at + delta))];
  selectItem(next, false);
}

function selectItem(key, open) {
  selectedKey = key;
  for (const li of $$("#queue li")) li.setAttribute("aria-selected", String(li.dataset.key === key));
  const li = $(`#queue li[data-key="${CSS.escape(key)}"]`);
  if (li) li.scrollIntoView({ block: "nearest" });
  if (open) openItem(key);
}

async function openItem(key) {
  const item = feed.items.get(key);
  if (!item) return;
  if (item.kind === "ticket") return showTicket(item.ref);
  if (item.kind === "conversation") return showConversation(item.ref);
  if (item.kind === "call" || item.kind === "callback") {
    $("#call-panel").scrollIntoView({ block: "nearest" });
    if (!PHONE) toast(t("call.not_connected"), true);
  }
}

// ---------------------------------------------------------------- ticket detail (agents)

async function showTicket(number) {
  let tk;
  try { tk = await api("GET", `/api/v1/tickets/${number}`); } catch (e) { toast(e.message, true); return; }
  $("#conversation").hidden = true;
  const box = $("#detail");
  box.hidden = false;
  $("#detail-title").textContent = `${t("ticket.number")} ${tk.number}`;
  const body = $("#detail-body");
  const allowed = tk.allowed_actions || [];
  const answer = el("textarea", { id: "detail-answer", rows: "3", class: "answer-target" });
  const sat = el("select", { id: "detail-sat" },
    ...["satisfied", "basically_satisfied", "unsatisfied"].map((s) => el("option", { value: s, text: label("sat", s) })));
  body.replaceChildren(
    el("p", {}, el("strong", { text: tk.title })),
    el("p", { text: tk.description }),
    dl([
      [t("col.status"), label("status", tk.status)],
      [t("form.kind"), label("kind", tk.kind)],
      [t("form.category"), tk.category.name || tk.category.code || "—"],
      [t("form.urgency"), label("urgency", tk.urgency)],
      [t("form.channel"), label("channel", tk.channel)],
      [t("form.address"), tk.location.address || "—"],
      [t("dispatch.lead"), tk.lead_department ? deptName(tk.lead_department) : "—"],
      [t("deadline.dispatch"), fmtTime(tk.deadlines.dispatch_due_at)],
      [t("deadline.feedback"), fmtTime(tk.deadlines.feedback_due_at)],
      [t("ticket.reply"), tk.reply || "—"],
    ]),
    allowed.includes("answer") ? el("div", {},
      el("label", { for: "detail-answer", text: t("form.answer") }), answer) : null,
    allowed.includes("follow_up") ? el("div", {},
      el("label", { for: "detail-sat", text: t("ticket.satisfaction") }), sat) : null,
    el("div", { class: "buttons" },
      allowed.includes("dispatch") ? el("button", { type: "button", class: "primary", text: t("form.dispatch"),
        onclick: () => openDispatch({ mode: "ticket", number: tk.number, category: tk.category.code,
          urgency: tk.urgency, district: tk.location.district }) }) : null,
      allowed.includes("answer") ? el("button", { type: "button", text: t("form.answer_direct"),
        onclick: () => moveTicket(tk.number, "answer", { answer: answer.value.trim() }) }) : null,
      allowed.includes("follow_up") ? el("button", { type: "button", class: "primary", text: t("ticket.follow_up"),
        onclick: () => moveTicket(tk.number, "follow-up", { satisfaction: sat.value }) }) : null,
      allowed.includes("grant_extension") ? el("button", { type: "button", text: t("ticket.grant"),
        onclick: () => moveTicket(tk.number, "extend/grant", {}) }) : null,
      allowed.includes("refuse_extension") ? el("button", { type: "button", text: t("ticket.refuse"),
        onclick: () => moveTicket(tk.number, "extend/refuse", {}) }) : null));
  box.scrollIntoView({ block: "nearest" });
}

function dl(pairs) {
  return el("dl", { class: "preview" }, ...pairs.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
}

async function moveTicket(number, action, body) {
  try {
    await api("POST", `/api/v1/tickets/${number}/${action}`, body);
    toast(t("ticket.moved", { number, action: label("move", action) }));
    $("#detail").hidden = true;
  } catch (e) { toast(e.message, true); }
}

// ---------------------------------------------------------------- conversation view

async function showConversation(id) {
  $("#detail").hidden = true;
  const box = $("#conversation");
  box.hidden = false;
  box.dataset.id = id;
  const status = $("#conversation-status");
  const list = $("#conversation-messages");
  const form = $("#conversation-form");
  const history = $("#conversation-history");
  const alarm = $("#conversation-emergency");
  list.replaceChildren();
  history.replaceChildren();
  alarm.hidden = true;
  if (!CONFIG.features.conversations) {
    status.textContent = t("conv.not_connected");
    form.hidden = true;
    return;
  }
  let c;
  try {
    c = await api("GET", `/api/v1/conversations/${encodeURIComponent(id)}`);
  } catch (e) {
    status.textContent = e.message;
    form.hidden = true;
    return;
  }
  if (box.dataset.id !== String(id)) return;  // another item was opened meanwhile
  const who = c.contact ? c.contact.display_name || c.contact.address : "";
  status.textContent = [label("channel", c.channel), label("convstatus", c.status), who,
    c.ticket_number ? `${t("call.ticket")} ${c.ticket_number}` : ""].filter(Boolean).join(" · ");
  if (c.emergency) {
    alarm.textContent = t("conv.emergency", { lines: (c.emergency_lines || []).join(" / ") });
    alarm.hidden = false;
  }
  list.replaceChildren(...(c.messages || []).map((m) =>
    el("li", { class: m.direction === "out" ? "out" : "in", "data-id": m.id },
      el("span", { class: "muted", text: `${fmtTime(m.sent_at)} ${m.direction === "out" ? m.author : ""} ` }),
      el("span", { class: "text", text: m.text || `[${m.kind || "media"}]` }),
      m.delivery ? el("span", { class: "muted delivery", text: ` · ${label("delivery", m.delivery.state)}` }) : null)));
  list.scrollTop = list.scrollHeight;
  form.hidden = c.status === "closed";
  $("#conv-ticket").disabled = !!c.ticket_number;
  $("#conv-attach").disabled = !!c.ticket_number;
  if (c.contact_id) conversationHistory(c).catch(() => { /* the view works without it */ });
}

async function conversationHistory(c) {
  const h = await api("GET", `/api/v1/contacts/${c.contact_id}/history`);
  if ($("#conversation").dataset.id !== String(c.id)) return;
  const others = (h.conversations || []).filter((x) => x.id !== c.id);
  const parts = [];
  if (others.length) {
    parts.push(el("h3", { text: t("conv.other_conversations") }), el("ul", { class: "history" },
      ...others.slice(0, 10).map((x) => el("li", {}, el("button", { type: "button", class: "link",
        text: `${label("channel", x.channel)} · ${fmtTime(x.last_message_at)} · ${label("convstatus", x.status)}`,
        onclick: () => showConversation(x.id) })))));
  }
  if ((h.tickets || []).length) {
    parts.push(el("h3", { text: t("conv.tickets") }), el("ul", { class: "history" },
      ...h.tickets.slice(0, 10).map((x) => el("li", {}, el("button", { type: "button", class: "link",
        text: `${x.number} ${x.title || ""} · ${label("status", x.status)}`, onclick: () => showTicket(x.number) })))));
  }
  $("#conversation-history").replaceChildren(...parts);
}

async function sendConversationReply(ev) {
  ev.preventDefault();
  const id = $("#conversation").dataset.id;
  const text = $("#conversation-reply").value.trim();
  if (!text) return;
  try {
    await api("POST", `/api/v1/conversations/${encodeURIComponent(id)}/messages`, { text });
    $("#conversation-reply").value = "";
    toast(t("conv.sent"));
    showConversation(id);
  } catch (e) { toast(e.message, true); }
}

async function conversationToTicket() {
  // the ticket form below supplies the fields; the description defaults to the resident's words
  const id = $("#conversation").dataset.id;
  const f = formBody();
  const body = { kind: f.kind, urgency: f.urgency };
  for (const k of ["title", "description", "category", "location"]) if (f[k]) body[k] = f[k];
  if (f.contact && f.contact.name) body.contact_name = f.contact.name;
  try {
    const tk = await api("POST", `/api/v1/conversations/${encodeURIComponent(id)}/ticket`, body);
    toast(t("conv.ticketed", { number: tk.number }));
    resetForm();
    showConversation(id);
  } catch (e) { $("#form-error").textContent = e.message; toast(e.message, true); }
}

async function conversationAttach() {
  const id = $("#conversation").dataset.id;
  const number = $("#conv-attach-number").value.trim();
  if (!number) { $("#conv-attach-number").focus(); return; }
  try {
    await api("POST", `/api/v1/conversations/${encodeURIComponent(id)}/ticket`, { number });
    toast(t("conv.attached", { number }));
    $("#conv-attach-number").value = "";
    showConversation(id);
  } catch (e) { toast(e.message, true); }
}

async function conversationClose() {
  const id = $("#conversation").dataset.id;
  try {
    await api("POST", `/api/v1/conversations/${encodeURIComponent(id)}/close`, {});
    toast(t("conv.closed"));
    showConversation(id);
  } catch (e) { toast(e.message, true); }
}

// ---------------------------------------------------------------- call panel

async function refreshPhone() {
  if (!CONFIG || !CONFIG.features.phone || !["agent", "supervisor"].includes(CONFIG.user.role)) {
    PHONE = null; renderCall(); return;
  }
  try {
    const me = await api("GET", ACD.me);
    me.call = me.call_uuid ? await api("GET", ACD.call(me.call_uuid)).catch(() => null) : null;
    PHONE = me;
  } catch (e) {
    // not logged in to the ACD yet (404/409): connected, no call
    PHONE = e.status === 404 || e.status === 409 ? { state: "logged_out", call: null } : null;
  }
  renderCall();
}

function renderCall() {
  const status = $("#call-status");
  const info = $("#call-info");
  const call = PHONE && PHONE.call;
  status.textContent = !PHONE ? t("call.not_connected") : call ? label("callstate", call.state) : t("call.idle");
  info.replaceChildren();
  const state = call ? call.state : null;
  if (call) {
    const pop = SCREEN_POPS.get(call.uuid) || {};
    info.append(dl([
      [t("call.caller"), call.caller || pop.caller || "—"],
      [t("call.resident"), pop.resident || "—"],
      [t("call.history"), t("call.previous_calls", { n: pop.previous_calls || 0 })],
      [t("call.ticket"), call.ticket || "—"],
    ]));
    const tickets = pop.open_tickets || [];
    if (tickets.length) {
      info.append(el("h3", { text: t("call.open_tickets") }), el("ul", { class: "history" }, ...tickets.map((x) => el("li", {},
        el("button", { type: "button", class: "link", text: `${x.number} ${x.title || ""} · ${label("status", x.status)}`,
          onclick: () => showTicket(x.number) })))));
    }
  }
  const talking = ["talking", "held", "conference"].includes(state);
  for (const b of $$("#call-panel button[data-call], #call-panel button[data-line]")) {
    const on = b.dataset.call === "answer" ? state === "ringing" : talking;
    b.disabled = !on;
    b.title = !PHONE ? t("call.not_connected") : !call ? t("call.idle") : "";
  }
  const sel = $("#agent-state");
  if (PHONE && sel && document.activeElement !== sel) showAgentState(PHONE.state);
}

async function callAction(action, body) {
  const call = PHONE && PHONE.call;
  if (!call) { toast(t("call.not_connected"), true); return; }
  try {
    if (action === "hold" && call.state === "held") action = "unhold";
    await api("POST", ACD.call(call.uuid, action), body);
    await refreshPhone();
  } catch (e) { toast(e.message, true); }
}

async function emergency(line) {
  if (!PHONE || !PHONE.call) { toast(t("call.not_connected"), true); return; }
  if (!(await confirmAction(t("call.confirm_emergency", { line: label("line", line) })))) return;
  toast(t("call.emergency_sent", { line }));
  await callAction("emergency", { line });
}

// ---------------------------------------------------------------- ticket form + dispatch

function formBody() {
  const v = (id) => $(id).value.trim();
  const body = {
    kind: v("#f-kind"), title: v("#f-title"), description: v("#f-description"),
    channel: v("#f-channel"), urgency: v("#f-urgency"),
  };
  if (v("#f-category")) body.category = v("#f-category");
  const location = {};
  if (v("#f-address")) location.address = v("#f-address");
  if (v("#f-district")) location.district = v("#f-district");
  if (v("#f-lat")) location.lat = Number(v("#f-lat"));
  if (v("#f-lon")) location.lon = Number(v("#f-lon"));
  if (Object.keys(location).length) body.location = location;
  const contact = {};
  if (v("#f-contact-name")) contact.name = v("#f-contact-name");
  if (v("#f-contact-phone")) contact.phone = v("#f-contact-phone");
  if (Object.keys(contact).length) body.contact = contact;
  return body;
}

function checkForm() {
  const err = $("#form-error");
  err.textContent = "";
  const body = formBody();
  if (!body.title) { err.textContent = t("form.need_title"); $("#f-title").focus(); return null; }
  if (!body.description) { err.textContent = t("form.need_description"); $("#f-description").focus(); return null; }
  for (const [k, lo, hi] of [["lat", -90, 90], ["lon", -180, 180]]) {
    const x = body.location && body.location[k];
    if (x !== undefined && !(Number.isFinite(x) && x >= lo && x <= hi)) {
      err.textContent = t("form.bad_coordinate"); $(`#f-${k}`).focus(); return null;
    }
  }
  return body;
}

let formKey = uuid();  // one Idempotency-Key per ticket being written: a retry never makes two

async function createFromForm(body) {
  return api("POST", "/api/v1/tickets", body, { "Idempotency-Key": formKey });
}

function resetForm() {
  $("#ticket-form").reset();
  formKey = uuid();
  filterCategories();
}

async function answerDirectly() {
  const body = checkForm();
  if (!body) return;
  const answer = $("#f-answer").value.trim();
  if (!answer) { $("#form-error").textContent = t("form.need_answer"); $("#f-answer").focus(); return; }
  try {
    const tk = await createFromForm(body);
    await api("POST", `/api/v1/tickets/${tk.number}/answer`, { answer });
    toast(t("form.answered", { number: tk.number }));
    resetForm();
  } catch (e) { $("#form-error").textContent = e.message; }
}

function openDispatch(ctx) {
  dispatchContext = ctx;
  const lead = $("#d-lead");
  lead.replaceChildren(el("option", { value: "", text: t("dispatch.auto") }),
    ...CATALOG.departments.filter((d) => d.active).map((d) => el("option", { value: d.code, text: d.name })));
  $("#d-assist").replaceChildren(...CATALOG.departments.filter((d) => d.active).map((d) =>
    el("label", {}, el("input", { type: "checkbox", value: d.code }), document.createTextNode(d.name))));
  $("#d-note").value = "";
  $("#dispatch-error").textContent = "";
  openOverlay("#dispatch-dialog");
  updatePreview(true);
}

function openDispatchFromForm() {
  const body = checkForm();
  if (!body) return;
  openDispatch({ mode: "new", body, category: body.category, urgency: body.urgency,
    district: body.location && body.location.district });
}

async function updatePreview(first = false) {
  const ctx = dispatchContext;
  const q = new URLSearchParams();
  if (ctx.mode === "ticket") q.set("ticket", ctx.number);
  if (ctx.category) q.set("category", ctx.category);
  if (ctx.urgency) q.set("urgency", ctx.urgency);
  if (ctx.district) q.set("district", ctx.district);
  const chosen = $("#d-lead").value;
  if (chosen) q.set("department", chosen);
  const box = $("#d-preview");
  try {
    const p = await api("GET", `/api/v1/console/dispatch-preview?${q}`);
    if (first && p.lead) $("#d-lead").value = p.lead;
    box.replaceChildren(...[
      [t("dispatch.lead"), p.lead ? `${p.lead_name || p.lead} (${label("routed", p.routed_by)})` : t("dispatch.no_lead")],
      [t("deadline.feedback"), `${fmtTime(p.feedback_due_at)} (${p.feedback_limit})`],
      [t("form.urgency"), label("urgency", p.urgency)],
    ].flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v, "data-testid": k })]));
    box.dataset.due = p.feedback_due_at || "";
  } catch (e) {
    box.replaceChildren(el("dd", { class: "error", text: e.message }));
  }
}

async function confirmDispatch() {
  const ctx = dispatchContext;
  const err = $("#dispatch-error");
  const lead = $("#d-lead").value;
  const assist = $$("#d-assist input:checked").map((x) => x.value).filter((c) => c !== lead);
  const note = $("#d-note").value.trim();
  const body = { assist };
  if (lead) body.department = lead;
  if (note) body.note = note;
  const button = $("#d-confirm");
  button.disabled = true;
  try {
    let number = ctx.number;
    if (ctx.mode === "new") number = (await createFromForm(ctx.body)).number;
    const tk = await api("POST", `/api/v1/tickets/${number}/dispatch`, body);
    closeOverlay($("#dispatch-dialog"));
    toast(t("dispatch.done", { number, dept: deptName(tk.lead_department), due: fmtTime(tk.deadlines.feedback_due_at) }));
    if (ctx.mode === "new") resetForm(); else $("#detail").hidden = true;
  } catch (e) {
    err.textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

function fillSelect(select, values, prefix) {
  select.replaceChildren(...values.map((v) => el("option", { value: v, text: label(prefix, v) })));
}

function categoryPath(c) {
  const parent = c.parent_code && CATALOG.categories.find((x) => x.code === c.parent_code);
  return parent ? `${parent.name} / ${c.name}` : c.name;
}

function filterCategories() {
  const q = $("#f-category-search").value.trim().toLowerCase();
  const sel = $("#f-category");
  const keep = sel.value;
  const cats = CATALOG.categories.filter((c) => c.active && (!q
    || c.name.toLowerCase().includes(q) || c.code.toLowerCase().includes(q)
    || categoryPath(c).toLowerCase().includes(q)));
  sel.replaceChildren(el("option", { value: "", text: t("form.no_category") }),
    ...cats.map((c) => el("option", { value: c.code, text: categoryPath(c) })));
  if (cats.some((c) => c.code === keep)) sel.value = keep;
  else if (q && cats.length) sel.value = cats[0].code;
  onCategoryChosen();
}

function onCategoryChosen() {
  const c = CATALOG.categories.find((x) => x.code === $("#f-category").value);
  if (c) $("#f-urgency").value = c.urgency;
}

// ---------------------------------------------------------------- knowledge base (side panel)

let kbTimer = null;

function kbSearchSoon() {
  clearTimeout(kbTimer);
  kbTimer = setTimeout(kbSearch, 150);
}

async function kbSearch() {
  const q = $("#kb-q").value.trim();
  try {
    const r = await api("GET", `/api/v1/kb/articles?limit=9&q=${encodeURIComponent(q)}`);
    kbHits = r.items;
  } catch (e) { kbHits = []; toast(e.message, true); }
  $("#kb-results").replaceChildren(...kbHits.map((a, i) => el("li", {},
    el("div", { class: "q" }, el("span", { class: "n", text: `${i + 1}` }), document.createTextNode(a.question)),
    el("div", { class: "a", text: a.answer }),
    el("button", { type: "button", class: "link", text: t("kb.insert", { n: i + 1 }), onclick: () => insertAnswer(i) }))));
}

function insertAnswer(i) {
  const a = kbHits[i];
  if (!a) return;
  let target = lastAnswerTarget;
  if (!target || target.offsetParent === null) {
    target = $$(".answer-target").find((x) => x.offsetParent !== null) || $("#f-answer");
  }
  const start = target.selectionStart ?? target.value.length;
  const end = target.selectionEnd ?? target.value.length;
  target.value = target.value.slice(0, start) + a.answer + target.value.slice(end);
  target.focus();
  target.selectionStart = target.selectionEnd = start + a.answer.length;
  toast(t("kb.inserted", { n: i + 1 }));
}

// ---------------------------------------------------------------- knowledge base (editor)

async function kbList() {
  const q = $("#kb-list-q").value.trim();
  const editor = ["supervisor", "admin"].includes(CONFIG.user.role);
  const r = await api("GET", `/api/v1/kb/articles?limit=50&include_retired=${editor}&q=${encodeURIComponent(q)}`);
  $("#kb-list").replaceChildren(...r.items.map((a) => el("li", { class: a.status === "retired" ? "retired" : "" },
    el("div", { class: "q" }, document.createTextNode(a.question),
      a.status === "retired" ? el("span", { class: "badge", text: t("kb.retired") }) : null,
      !a.in_force && a.status !== "retired" ? el("span", { class: "badge warn", text: t("kb.not_in_force") }) : null),
    el("div", { class: "a", text: a.answer }),
    el("div", { class: "muted", text: `${catName(a.category)} · ${deptName(a.owner_department)} · ${a.valid_from || "…"} – ${a.valid_to || "…"}` }),
    editor ? el("button", { type: "button", class: "link", text: t("kb.edit"), onclick: () => kbEdit(a) }) : null)));
}

function kbEdit(a) {
  kbEditing = a;
  $("#kb-form-title").textContent = a ? t("kb.editing", { id: a.id }) : t("kb.new");
  $("#k-question").value = a ? a.question : "";
  $("#k-answer").value = a ? a.answer : "";
  $("#k-category").value = a && a.category ? a.category : "";
  $("#k-owner").value = a && a.owner_department ? a.owner_department : "";
  $("#k-from").value = a && a.valid_from ? a.valid_from : "";
  $("#k-to").value = a && a.valid_to ? a.valid_to : "";
  $("#kb-retire").hidden = !a || a.status === "retired";
  $("#kb-restore").hidden = !a || a.status !== "retired";
  $("#kb-error").textContent = "";
  $("#k-question").focus();
}

async function kbSave(ev) {
  ev.preventDefault();
  const body = {
    question: $("#k-question").value.trim(),
    answer: $("#k-answer").value.trim(),
    category: $("#k-category").value || null,
    owner_department: $("#k-owner").value || null,
    valid_from: $("#k-from").value || null,
    valid_to: $("#k-to").value || null,
  };
  try {
    if (kbEditing) {
      kbEditing = await api("PATCH", `/api/v1/kb/articles/${kbEditing.id}`, { ...body, version: kbEditing.version });
    } else {
      kbEditing = await api("POST", "/api/v1/kb/articles", body);
    }
    toast(t("kb.saved"));
    kbEdit(kbEditing);
    kbList();
  } catch (e) { $("#kb-error").textContent = e.message; }
}

async function kbSetStatus(action) {
  if (!kbEditing) return;
  try {
    kbEditing = await api("POST", `/api/v1/kb/articles/${kbEditing.id}/${action}`);
    kbEdit(kbEditing);
    kbList();
  } catch (e) { $("#kb-error").textContent = e.message; }
}

// ---------------------------------------------------------------- department inbox

let inboxTimer = null;

async function inboxLoad() {
  const r = await api("GET", "/api/v1/tickets?status=dispatched,accepted,extension_requested&limit=200");
  const rows = r.items.sort((a, b) => (a.deadlines.feedback_due_at || "").localeCompare(b.deadlines.feedback_due_at || ""));
  $("#inbox-count").textContent = `(${rows.length})`;
  $("#inbox-empty").hidden = rows.length > 0;
  $("#inbox-rows").replaceChildren(...rows.map((tk) => {
    const due = tk.deadlines.feedback_due_at;
    const tr = el("tr", { tabindex: "0", "data-number": tk.number, "aria-selected": String(tk.number === inboxSelected),
      onclick: () => inboxOpen(tk.number), onkeydown: (e) => { if (e.key === "Enter") inboxOpen(tk.number); } },
      el("td", { text: tk.number }),
      el("td", { text: tk.title }),
      el("td", { text: label("status", tk.status) }),
      el("td", {}, el("span", { text: fmtTime(due) + " " }),
        due ? el("span", { class: "countdown", "data-due": due }) : null,
        tk.deadlines.overdue ? el("span", { class: "badge over", text: t("risk.breached") }) : null));
    return tr;
  }));
  tickClocks();
  markInboxWarnings(rows);
}

function markInboxWarnings(rows) {
  // a warning once less than a fifth of the time is left (the deadline watcher's 80 %)
  const now = Date.now();
  for (const tk of rows) {
    const due = Date.parse(tk.deadlines.feedback_due_at || "");
    const start = Date.parse(tk.dispatched_at || tk.created_at);
    if (!due || tk.deadlines.overdue) continue;
    if (now - start >= 0.8 * (due - start)) {
      const cell = $(`#inbox-rows tr[data-number="${tk.number}"] td:last-child`);
      if (cell) cell.append(el("span", { class: "badge warn", text: t("risk.warning") }));
    }
  }
}

function inboxSoon() {
  clearTimeout(inboxTimer);
  inboxTimer = setTimeout(() => inboxLoad().catch((e) => toast(e.message, true)), 300);
}

async function inboxOpen(number) {
  inboxSelected = number;
  for (const tr of $$("#inbox-rows tr")) tr.setAttribute("aria-selected", String(tr.dataset.number === number));
  let tk;
  try { tk = await api("GET", `/api/v1/tickets/${number}`); } catch (e) { toast(e.message, true); return; }
  $("#inbox-detail").hidden = false;
  $("#inbox-detail-title").textContent = `${t("ticket.number")} ${tk.number} · ${tk.title}`;
  $("#inbox-detail-body").replaceChildren(
    el("p", { text: tk.description }),
    dl([
      [t("col.status"), label("status", tk.status)],
      [t("form.category"), tk.category.name || "—"],
      [t("form.address"), tk.location.address || "—"],
      [t("deadline.feedback"), fmtTime(tk.deadlines.feedback_due_at)],
      [t("inbox.assist"), tk.assist_departments.map(deptName).join("、") || "—"],
    ]));
  const allowed = tk.allowed_actions || [];
  const map = { sign: "sign", reply: "reply", extend: "request_extension", return: "return" };
  for (const b of $$("#inbox-form [data-move]")) b.disabled = !allowed.includes(map[b.dataset.move]);
  $("#inbox-error").textContent = "";
  $("#i-text").focus();
}

async function inboxMove(move) {
  const number = inboxSelected;
  const text = $("#i-text").value.trim();
  const err = $("#inbox-error");
  err.textContent = "";
  let body = {};
  if (move === "reply") body = { reply: text };
  if (move === "return") body = { reason: text };
  if (move === "extend") body = { extra: $("#i-extra").value.trim(), reason: text };
  if (move === "sign" && text) body = { note: text };
  if (move !== "sign" && !text) { err.textContent = t("inbox.need_text"); $("#i-text").focus(); return; }
  if (move === "return" && !(await confirmAction(t("inbox.confirm_return", { number })))) return;
  try {
    await api("POST", `/api/v1/tickets/${number}/${move}`, body);
    toast(t("ticket.moved", { number, action: label("move", move) }));
    $("#i-text").value = "";
    await inboxLoad();
    await inboxOpen(number).catch(() => {});
  } catch (e) { err.textContent = e.message; }
}

// ---------------------------------------------------------------- supervisor wall

let wallTimer = null;
let wallSoonTimer = null;

function svgEl(tag, attrs = {}) {
  const n = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  return n;
}

// Horizontal bars; each segment is a focusable button that drills down.
function barChart(container, rows, emptyText) {
  if (!rows.length) { container.replaceChildren(el("p", { class: "muted", text: emptyText || t("wall.nothing") })); return; }
  const max = Math.max(1, ...rows.map((r) => r.segments.reduce((s, x) => s + x.value, 0)));
  const rowH = 26, labelW = 150, width = 460, barW = width - labelW - 50;
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${rows.length * rowH + 4}`, width: "100%", role: "img",
    "aria-label": container.previousElementSibling ? container.previousElementSibling.textContent : "" });
  rows.forEach((r, i) => {
    const y = i * rowH + 4;
    const text = svgEl("text", { x: labelW - 6, y: y + 15, "text-anchor": "end" });
    text.textContent = r.label.length > 14 ? r.label.slice(0, 13) + "…" : r.label;
    svg.append(text);
    let x = labelW;
    for (const s of r.segments) {
      if (!s.value) continue;
      const w = Math.max(2, (s.value / max) * barW);
      const rect = svgEl("rect", { x, y, width: w, height: rowH - 8, class: `bar ${s.cls || ""}`, tabindex: "0",
        role: "button", "aria-label": `${r.label} ${s.name || ""} ${s.value}` });
      rect.addEventListener("click", () => drill(s.metric, s.param, `${r.label} ${s.name || ""}`));
      rect.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); drill(s.metric, s.param, r.label); } });
      svg.append(rect);
      x += w;
    }
    const total = svgEl("text", { x: x + 6, y: y + 15 });
    total.textContent = r.segments.map((s) => s.value).filter(Boolean).join(" / ") || "0";
    svg.append(total);
  });
  container.replaceChildren(svg);
}

function tile(key, value, opts = {}) {
  const unknown = value === null || value === undefined;
  const b = el(opts.metric && !unknown ? "button" : "div", {
    type: opts.metric && !unknown ? "button" : null,
    class: `tile ${unknown ? "unknown" : opts.bad && value > 0 ? "bad" : ""}`,
    "data-metric": opts.metric || null, "data-testid": `tile-${key}`,
    title: unknown ? t(opts.unknownText || "call.not_connected") : null,
    onclick: opts.metric && !unknown ? () => drill(opts.metric, opts.param, t(`wall.${key}`)) : null,
  }, el("span", { class: "v", text: unknown ? "—" : opts.format ? opts.format(value) : String(value) }),
  el("span", { class: "k", text: t(`wall.${key}`) }));
  return b;
}

async function wallLoad() {
  let w;
  try { w = await api("GET", "/api/v1/console/wall"); } catch (e) { toast(e.message, true); return; }
  $("#wall-time").textContent = fmtTime(w.generated_at);
  const pct = (x) => `${Math.round(x * 1000) / 10}%`;
  const secs = (x) => fmtDur(x * 1000);
  const ph = w.phone;  // computed by the server from the ACD and the call records
  const noCalls = ph.connected ? "wall.no_calls" : "call.not_connected";
  $("#wall-tiles").replaceChildren(
    tile("at_risk", w.tickets.at_risk, { metric: "at_risk", bad: true }),
    tile("breached", w.tickets.breached, { metric: "breached", bad: true }),
    tile("volume_today", w.volume_today.total),
    tile("agents_available", w.agents.by_state.available, { metric: "agents", param: "available" }),
    tile("conversations_over_3min", w.conversations.waiting_over_3min, { metric: "conversations_over_3min", bad: true }),
    tile("conversations_waiting", w.conversations.waiting, { metric: "conversations_waiting" }),
    tile("calls_waiting", ph.calls_waiting, { metric: "calls_waiting" }),
    tile("longest_wait", ph.longest_wait_s, { format: secs }),
    tile("service_level", ph.service_level_15s_today, { format: pct, unknownText: noCalls }),
    tile("connection_rate", ph.connection_rate_24h, { format: pct, unknownText: noCalls }),
    tile("emergency_handoffs", ph.emergency_handoffs_today, { metric: "emergency_handoffs", bad: true }));
  renderAlerts(w.alerts || []);
  barChart($("#chart-dept"), w.tickets.by_department.map((d) => ({
    label: d.department === "(hotline)" ? t("wall.centre") : d.name || d.department,
    segments: [
      { value: d.breached, cls: "bad", metric: "breached", param: d.department, name: t("wall.breached") },
      { value: d.at_risk, cls: "warn", metric: "at_risk", param: d.department, name: t("wall.at_risk") },
    ],
  })));
  barChart($("#chart-channel"), w.volume_today.by_channel.map((c) => ({
    label: label("channel", c.channel),
    segments: [{ value: c.count, metric: "channel", param: c.channel }],
  })));
  barChart($("#chart-category"), w.volume_today.by_category.slice(0, 10).map((c) => ({
    label: c.name || c.category || t("form.no_category"),
    segments: [{ value: c.count, metric: "category", param: c.category || "" }],
  })));
  barChart($("#chart-agents"), Object.entries(w.agents.by_state).map(([state, n]) => ({
    label: label("state", state),
    segments: [{ value: n, metric: "agents", param: state }],
  })));
}

async function drill(metric, param, title) {
  const q = param !== undefined && param !== null ? `?value=${encodeURIComponent(param)}` : "";
  let r;
  try { r = await api("GET", `/api/v1/console/wall/${metric}${q}`); } catch (e) { toast(e.message, true); return; }
  $("#drill").hidden = false;
  $("#drill-title").textContent = `${title} (${r.items.length})`;
  let head, rows;
  if (metric === "agents") {
    head = [t("col.user"), t("state.label"), t("col.state_for")];
    rows = r.items.map((a) => [a.username, label("state", a.state), fmtDur((a.state_for_s || 0) * 1000)]);
  } else if (metric === "calls_waiting") {
    head = [t("col.caller"), t("col.position"), t("col.since")];
    rows = r.items.map((c) => [c.caller, String(c.position), fmtTime(c.entered_at)]);
  } else if (metric === "emergency_handoffs") {
    head = [t("col.line"), t("col.user"), t("col.outcome"), t("col.since")];
    rows = r.items.map((x) => [label("line", x.line), x.agent || "—", x.outcome, fmtTime(x.requested_at)]);
  } else if (metric.startsWith("conversations")) {
    head = [t("col.kind"), t("col.ref"), t("col.since"), t("col.claimed")];
    rows = r.items.map((x) => [label("itemkind", x.kind), x.ref, fmtTime(x.since), x.claimed_by || "—"]);
  } else {
    head = [t("col.number"), t("col.title"), t("col.status"), t("dispatch.lead"), t("col.deadline")];
    rows = r.items.map((x) => [x.number, x.title, label("status", x.status), x.lead_department ? deptName(x.lead_department) : "—",
      fmtTime(["new", "returned", "reopened"].includes(x.status) ? x.dispatch_due_at : x.feedback_due_at)]);
  }
  $("#drill-body").replaceChildren(el("table", { class: "table" },
    el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, ...rows.map((row) => el("tr", {}, ...row.map((c) => el("td", { text: c })))))));
  $("#drill").scrollIntoView({ block: "nearest" });
  $("#drill-close").focus();
}

function alertText(a) {
  return a.source === "channel"
    ? t("alert.channel", { channel: label("channel", a.channel), lines: a.lines.join("/"), text: a.text })
    : t("alert.phone", { lines: a.lines.join("/"), text: a.text });
}

function renderAlerts(alerts) {
  const list = $("#wall-alerts");
  if (!alerts.length) { list.replaceChildren(el("li", { class: "muted", text: t("wall.no_alerts") })); return; }
  list.replaceChildren(...alerts.map((a) => el("li", { class: "alert-line", "data-key": a.key || "" },
    el("span", { class: "muted", text: `${fmtTime(a.at)} ` }), el("span", { text: alertText(a) }))));
}

function showAlert(a) {
  // supervisors: a banner that stays until dismissed, and the wall's list
  const banner = $("#alert-banner");
  banner.replaceChildren(el("span", { text: alertText(a) }),
    el("button", { type: "button", class: "link", text: t("app.close"), onclick: () => { banner.hidden = true; } }));
  banner.hidden = false;
  wallSoon();
}

function wallSoon() {
  if (currentView !== "wall") return;
  clearTimeout(wallSoonTimer);
  wallSoonTimer = setTimeout(wallLoad, 1000);
}

// ---------------------------------------------------------------- performance report

const REPORT_GROUPS = ["", "department", "category", "channel", "kind", "district", "day"];
const REPORT_COLUMNS = [
  "received", "answered_directly", "dispatched", "dispatch_on_time_rate", "completed",
  "on_time_completion_rate", "follow_ups", "satisfaction_rate", "returns", "extensions_granted",
  "supervised", "reopened", "open", "overdue_open", "avg_hours_to_complete",
];

function reportQuery(format) {
  const q = new URLSearchParams();
  if ($("#r-from").value) q.set("from", $("#r-from").value);
  if ($("#r-to").value) q.set("to", $("#r-to").value);
  if ($("#r-by").value) q.set("by", $("#r-by").value);
  if (format) q.set("format", format);
  return `/api/v1/reports/performance?${q}`;
}

function reportCell(key, value) {
  if (value === null || value === undefined) return "—";
  if (key.endsWith("_rate")) return `${(value * 100).toFixed(1)}%`;
  return String(value);
}

function reportLabel(by, row) {
  if (by === "department" && row.key === "-") return t("report.centre");
  if (by === "channel" || by === "kind") return label(by, row.key);
  return row.label || row.key;
}

function reportGroups() {
  const select = $("#r-by");
  const chosen = select.value;
  select.replaceChildren(...REPORT_GROUPS.map((g) =>
    el("option", { value: g, text: t(g ? `report.by_${g}` : "report.by_none") })));
  select.value = chosen || "department";
}

async function reportLoad() {
  reportGroups();
  let doc;
  try { doc = await api("GET", reportQuery()); } catch (e) { toast(e.message, true); return; }
  $("#r-from").value = doc.from;
  $("#r-to").value = doc.to;
  $("#r-csv").href = reportQuery("csv");
  const by = doc.by || "";
  const head = el("tr", {}, el("th", { scope: "col", text: by ? t(`report.by_${by}`) : t("report.group") }),
    ...REPORT_COLUMNS.map((c) => el("th", { scope: "col", class: "num", text: t(`report.col_${c}`) })));
  const line = (name, figures, cls) => el("tr", { class: cls || null },
    el("th", { scope: "row", text: name }),
    ...REPORT_COLUMNS.map((c) => el("td", { class: "num", "data-col": c, text: reportCell(c, figures[c]) })));
  const body = doc.rows.map((r) => line(reportLabel(by, r), r));
  const table = el("table", { class: "table report-table", "data-testid": "report-table" },
    el("thead", {}, head), el("tbody", {}, ...body),
    el("tfoot", {}, line(t("report.total"), doc.total, "total")));
  $("#report-body").replaceChildren(doc.total.received ? table : el("p", { class: "muted", text: t("report.empty") }));
}

// ---------------------------------------------------------------- staff accounts (admin)

const ROLES = ["agent", "supervisor", "department", "admin"];

async function staffAction(method, path, body, confirmText) {
  if (confirmText && !(await confirmAction(confirmText))) return;
  try { await api(method, path, body); } catch (e) { toast(e.message, true); return; }
  toast(t("staff.done"));
  staffLoad();
}

async function staffLoad() {
  let r;
  try { r = await api("GET", "/api/v1/staff"); } catch (e) { toast(e.message, true); return; }
  const path = (u, tail = "") => `/api/v1/staff/${encodeURIComponent(u.username)}${tail}`;
  const rows = r.items.map((u) => {
    const state = !u.active ? t("staff.inactive")
      : u.locked_until ? t("staff.locked", { until: fmtTime(u.locked_until) }) : t("staff.active");
    const actions = el("td", { class: "actions" },
      u.locked_until ? el("button", { type: "button", class: "link", text: t("staff.unlock"),
        onclick: () => staffAction("POST", path(u, "/unlock"), {}) }) : null,
      el("button", { type: "button", class: "link", text: u.active ? t("staff.deactivate") : t("staff.activate"),
        onclick: () => staffAction("PATCH", path(u), { active: !u.active },
          u.active ? t("staff.confirm_deactivate", { user: u.username }) : null) }),
      el("button", { type: "button", class: "link", text: t("staff.reset"), onclick: () => {
        const pw = prompt(t("staff.reset_prompt", { user: u.username }));
        if (pw) staffAction("POST", path(u, "/password"), { new_password: pw });
      } }));
    return el("tr", { "data-username": u.username, class: u.active ? null : "muted" },
      el("th", { scope: "row", text: u.username }),
      el("td", { text: u.display_name || "" }),
      el("td", { text: label("role", u.role) }),
      el("td", { text: u.department ? deptName(u.department) : t("staff.none") }),
      el("td", { class: "state", text: state }),
      el("td", { class: "num", text: String(u.sessions) }),
      actions);
  });
  const head = el("tr", {}, ...["staff.username", "staff.display_name", "staff.role", "staff.department",
    "staff.state", "staff.sessions", "staff.actions"].map((k) => el("th", { scope: "col", text: t(k) })));
  $("#staff-body").replaceChildren(el("table", { class: "table report-table", "data-testid": "staff-table" },
    el("thead", {}, head), el("tbody", {}, ...rows)));
  const role = $("#s-role").value;
  fillSelect($("#s-role"), ROLES, "role");
  $("#s-role").value = role || "agent";
  const dept = $("#s-department").value;
  $("#s-department").replaceChildren(el("option", { value: "", text: t("staff.none") }),
    ...CATALOG.departments.filter((d) => d.active).map((d) => el("option", { value: d.code, text: d.name })));
  $("#s-department").value = dept;
}

async function staffCreate(e) {
  e.preventDefault();
  $("#staff-error").textContent = "";
  const body = { username: $("#s-username").value.trim(), password: $("#s-password").value,
    role: $("#s-role").value, display_name: $("#s-name").value.trim() };
  if ($("#s-department").value) body.department = $("#s-department").value;
  try { await api("POST", "/api/v1/staff", body); } catch (err) { $("#staff-error").textContent = err.message; return; }
  $("#staff-form").reset();
  toast(t("staff.done"));
  staffLoad();
}

// ---------------------------------------------------------------- my password

async function changePassword(e) {
  e.preventDefault();
  const error = $("#pw-error");
  error.textContent = "";
  if ($("#pw-new").value !== $("#pw-again").value) { error.textContent = t("password.mismatch"); return; }
  try {
    await api("POST", "/api/v1/auth/password",
      { current_password: $("#pw-current").value, new_password: $("#pw-new").value });
  } catch (err) { error.textContent = err.message; return; }
  $("#password-form").reset();
  closeOverlay($("#password"));
  toast(t("password.done"));
}

// ---------------------------------------------------------------- views, state, shortcuts

function showView(name) {
  const allowed = VIEWS_BY_ROLE[CONFIG.user.role] || [];
  if (!allowed.includes(name)) return;
  currentView = name;
  for (const v of $$(".view")) v.hidden = v.id !== `view-${name}`;
  for (const b of $$("#tabs button")) {
    if (b.dataset.view === name) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  clearInterval(wallTimer);
  if (name === "wall") { wallLoad(); wallTimer = setInterval(wallLoad, 5000); }
  if (name === "inbox") inboxLoad().catch((e) => toast(e.message, true));
  if (name === "kb") kbList().catch((e) => toast(e.message, true));
  if (name === "report") reportLoad();
  if (name === "staff") staffLoad();
}

function showAgentState(state) {
  // ringing, on call and wrap-up are the ACD's doing: shown, not chosen
  const sel = $("#agent-state");
  if (![...sel.options].some((o) => o.value === state)) {
    sel.append(el("option", { value: state, text: label("state", state), disabled: "" }));
  }
  for (const o of [...sel.options]) if (o.disabled && o.value !== state) o.remove();
  sel.value = state;
}

async function setAgentState(state) {
  // one record of agents' states: the ACD's (login first, then available/break)
  try {
    if (!PHONE) throw new Error(t("call.not_connected"));
    if (state === "logged_out") {
      await api("POST", ACD.logout);
    } else {
      if (PHONE.state === "logged_out") {
        try {
          await api("POST", ACD.login, {});
        } catch (e) {
          if (e.status !== 400 && e.status !== 422) throw e;
          const extension = (prompt(t("state.extension")) || "").trim();
          if (!extension) { showAgentState(PHONE.state); return; }
          await api("POST", ACD.login, { extension });
        }
      }
      await api("PUT", ACD.state, { state });
    }
    await refreshPhone();
    toast(t("state.set", { state: label("state", state) }));
  } catch (e) {
    toast(e.message, true);
    await refreshPhone();
  }
}

const SHORTCUTS = [
  ["?", "help.help"],
  ["j / k", "help.queue_move"],
  ["Enter", "help.queue_open"],
  ["n", "help.new_ticket"],
  ["/", "help.kb_search"],
  ["Alt+1 … Alt+9", "help.kb_insert"],
  ["Alt+D", "help.dispatch"],
  ["Alt+A", "help.answer"],
  ["Alt+R", "help.available"],
  ["Alt+B", "help.break"],
  ["g q / g i / g k / g m", "help.views"],
  ["Esc", "help.close"],
];

function renderHelp() {
  $("#help-list").replaceChildren(...SHORTCUTS.flatMap(([keys, key]) => [
    el("dt", {}, el("kbd", { text: keys })), el("dd", { text: t(key) })]));
}

function onKey(e) {
  const open = $$(".overlay").find((o) => !o.hidden);
  if (e.key === "Escape") {
    if (open) { open.dispatchEvent(new Event("close-overlay")); closeOverlay(open); e.preventDefault(); }
    return;
  }
  if (open || !CONFIG) return;
  if (e.altKey && !e.ctrlKey && !e.metaKey) {
    const digit = /^Digit([1-9])$/.exec(e.code);
    if (digit) { e.preventDefault(); insertAnswer(Number(digit[1]) - 1); return; }
    const actions = {
      KeyD: () => currentView === "workspace" && openDispatchFromForm(),
      KeyA: () => currentView === "workspace" && answerDirectly(),
      KeyR: () => setAgentState("available"),
      KeyB: () => setAgentState("break"),
    };
    if (actions[e.code]) { e.preventDefault(); actions[e.code](); }
    return;
  }
  if (typing(e.target) || e.ctrlKey || e.metaKey) return;
  if (pendingG) {
    pendingG = false;
    const views = { q: "workspace", i: "inbox", k: "kb", m: "wall" };
    if (views[e.key]) { e.preventDefault(); showView(views[e.key]); }
    return;
  }
  const keys = {
    "?": () => openOverlay("#help"),
    j: () => moveSelection(1),
    k: () => moveSelection(-1),
    Enter: () => selectedKey && currentView === "workspace" && openItem(selectedKey),
    n: () => { showView("workspace"); $("#f-kind").focus(); },
    "/": () => { if (currentView === "kb") $("#kb-list-q").focus(); else $("#kb-q").focus(); },
    g: () => { pendingG = true; setTimeout(() => { pendingG = false; }, 1500); },
  };
  if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
}

// ---------------------------------------------------------------- login and start

function showLogin() {
  if (feed) feed.stop();
  feed = null;
  CONFIG = null;
  $("#app-view").hidden = true;
  $("#login-view").hidden = false;
  $("#login-username").focus();
}

async function login(ev) {
  ev.preventDefault();
  const username = $("#login-username").value.trim();
  const password = $("#login-password").value;
  $("#login-error").textContent = "";
  if (!username || !password) { $("#login-error").textContent = t("login.missing"); return; }
  try {
    await api("POST", "/api/v1/auth/login", { username, password });
    $("#login-password").value = "";
    await start();
  } catch (e) {
    $("#login-error").textContent = e.status === 401 ? t("login.wrong") : e.message;
  }
}

async function logout() {
  try { await api("POST", "/api/v1/auth/logout"); } catch { /* signed out already */ }
  showLogin();
}

async function start() {
  CONFIG = await api("GET", "/api/v1/console/config");
  const [deps, cats] = await Promise.all([api("GET", "/api/v1/departments"), api("GET", "/api/v1/categories")]);
  CATALOG = { departments: deps.items, categories: cats.items };
  $("#login-view").hidden = true;
  $("#app-view").hidden = false;
  $("#who").textContent = `${CONFIG.user.username} · ${label("role", CONFIG.user.role)}`;
  const allowed = VIEWS_BY_ROLE[CONFIG.user.role] || [];
  for (const b of $$("#tabs button")) b.hidden = !allowed.includes(b.dataset.view);
  const floor = ["agent", "supervisor"].includes(CONFIG.user.role);
  $("#agent-state").hidden = !floor;
  $(".state-label").hidden = !floor;
  fillSelect($("#agent-state"), CONFIG.agent_states, "state");
  fillSelect($("#f-kind"), KINDS, "kind");
  fillSelect($("#f-urgency"), URGENCIES, "urgency");
  fillSelect($("#f-channel"), CHANNELS, "channel");
  const none = (text) => el("option", { value: "", text });
  $("#k-category").replaceChildren(none(t("form.no_category")),
    ...CATALOG.categories.filter((c) => c.active).map((c) => el("option", { value: c.code, text: categoryPath(c) })));
  $("#k-owner").replaceChildren(none("—"),
    ...CATALOG.departments.filter((d) => d.active).map((d) => el("option", { value: d.code, text: d.name })));
  $("#kb-form").hidden = !["supervisor", "admin"].includes(CONFIG.user.role);
  filterCategories();
  renderHelp();
  await refreshPhone();
  if (CONFIG.features.phone) setInterval(refreshPhone, 2000);
  feed = new Feed((frame) => {
    renderQueue();
    if (currentView === "inbox") inboxSoon();
    wallSoon();
    if (frame.type === "events") document.body.dataset.lastSeq = String(feed.seq);
  });
  feed.connect();
  showView(allowed[0]);
  kbSearch();
}

function wire() {
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", logout);
  for (const b of $$(".lang-toggle")) {
    b.addEventListener("click", async () => {
      await loadLang(LANG === "zh-CN" ? "en" : "zh-CN");
      if (CONFIG) { renderHelp(); renderQueue(); renderCall(); if (currentView) showView(currentView); }
    });
  }
  $("#help-button").addEventListener("click", () => openOverlay("#help"));
  for (const b of $$("[data-close]")) {
    b.addEventListener("click", () => {
      const o = b.closest(".overlay");
      o.dispatchEvent(new Event("close-overlay"));
      closeOverlay(o);
    });
  }
  for (const b of $$("#tabs button")) b.addEventListener("click", () => showView(b.dataset.view));
  $("#agent-state").addEventListener("change", (e) => setAgentState(e.target.value));
  $("#queue").addEventListener("keydown", (e) => {
    if (e.key === "ArrowDown") { e.preventDefault(); moveSelection(1); }
    if (e.key === "ArrowUp") { e.preventDefault(); moveSelection(-1); }
    if (e.key === "Enter" && selectedKey) { e.preventDefault(); openItem(selectedKey); }
  });
  $("#f-category-search").addEventListener("input", filterCategories);
  $("#f-category").addEventListener("change", onCategoryChosen);
  $("#answer-direct").addEventListener("click", answerDirectly);
  $("#open-dispatch").addEventListener("click", openDispatchFromForm);
  $("#ticket-form").addEventListener("reset", () => setTimeout(() => { formKey = uuid(); filterCategories(); }));
  $("#d-lead").addEventListener("change", () => updatePreview(false));
  $("#d-confirm").addEventListener("click", confirmDispatch);
  $("#kb-q").addEventListener("input", kbSearchSoon);
  $("#kb-list-q").addEventListener("input", () => kbList().catch((e) => toast(e.message, true)));
  $("#kb-form").addEventListener("submit", kbSave);
  $("#kb-new").addEventListener("click", () => kbEdit(null));
  $("#kb-retire").addEventListener("click", () => kbSetStatus("retire"));
  $("#kb-restore").addEventListener("click", () => kbSetStatus("restore"));
  for (const b of $$("#inbox-form [data-move]")) b.addEventListener("click", () => inboxMove(b.dataset.move));
  $("#conversation-form").addEventListener("submit", sendConversationReply);
  $("#conv-ticket").addEventListener("click", conversationToTicket);
  $("#conv-attach").addEventListener("click", conversationAttach);
  $("#conv-close").addEventListener("click", conversationClose);
  for (const b of $$("#call-panel [data-call]")) {
    b.addEventListener("click", () => callAction(b.dataset.call, b.dataset.call === "transfer"
      ? { mode: "blind", target: prompt(t("call.transfer_to")) || "" } : undefined));
  }
  for (const b of $$("#call-panel [data-line]")) b.addEventListener("click", () => emergency(b.dataset.line));
  $("#drill-close").addEventListener("click", () => { $("#drill").hidden = true; });
  $("#report-form").addEventListener("submit", (e) => { e.preventDefault(); reportLoad(); });
  $("#password-button").addEventListener("click", () => openOverlay("#password"));
  $("#password-form").addEventListener("submit", changePassword);
  $("#staff-form").addEventListener("submit", staffCreate);
  document.addEventListener("focusin", (e) => {
    if (e.target.classList && e.target.classList.contains("answer-target")) lastAnswerTarget = e.target;
  });
  document.addEventListener("keydown", onKey);
  setInterval(tickClocks, 1000);
}

async function boot() {
  wire();
  const saved = localStorage.getItem("console.lang");
  await loadLang(LANGS.includes(saved) ? saved : "zh-CN");
  try {
    await start();
  } catch (e) {
    if (e.status === 401) showLogin();
    else { showLogin(); $("#login-error").textContent = e.message; }
  }
}

boot();
