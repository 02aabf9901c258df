// Web chat client: keeps its session token in localStorage so a reload continues the
// conversation, sends messages with a client id (a resend is deduplicated by the server)
// and polls for replies, including those written later by a human agent.
(function () {
  "use strict";
  const TOKEN_KEY = "supportbot.webchat.token";
  const POLL_MS = 2500;
  const log = document.getElementById("log");
  const input = document.getElementById("input");
  const form = document.getElementById("composer");
  const status = document.getElementById("status");
  const seen = new Set();
  let lastId = 0;
  let token = localStorage.getItem(TOKEN_KEY);
  let lang = (navigator.language || "en").split("-")[0];
  let strings = { connection_error: "Connection problem, retrying…" };

  function newId() {
    return (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random()).replace(/[^A-Za-z0-9_-]/g, "");
  }

  function showStatus(text) {
    status.textContent = text || "";
    status.hidden = !text;
  }

  function render(message) {
    if (seen.has(message.id)) return;
    seen.add(message.id);
    lastId = Math.max(lastId, message.id);
    const item = document.createElement("li");
    item.className = "msg " + message.from;
    item.dir = "auto";
    item.dataset.id = message.id;
    item.textContent = message.text;
    (message.attachments || []).forEach(function (name) {
      const file = document.createElement("div");
      file.className = "attachment";
      file.textContent = "📎 " + name;
      item.appendChild(file);
    });
    if (message.buttons && message.buttons.length) {
      const row = document.createElement("div");
      row.className = "buttons";
      message.buttons.forEach(function (label) {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = label;
        button.addEventListener("click", function () { send(label); });
        row.appendChild(button);
      });
      item.appendChild(row);
    }
    log.appendChild(item);
    log.scrollTop = log.scrollHeight;
  }

  async function api(method, path, body) {
    const headers = { "Content-Type": "application/json" };
    if (token) headers["X-Webchat-Token"] = token;
    const response = await fetch(path, { method: method, headers: headers, body: body ? JSON.stringify(body) : undefined });
    const data = await response.json().catch(function () { return {}; });
    if (!response.ok) {
      const error = new Error(data.error || response.statusText);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  async function ensureToken() {
    if (!token) {
      token = (await api("POST", "/api/webchat/session")).token;
      localStorage.setItem(TOKEN_KEY, token);
    }
  }

  async function poll() {
    try {
      const data = await api("GET", "/api/webchat/messages?after=" + lastId);
      data.messages.forEach(render);
      showStatus("");
    } catch (error) {
      showStatus(strings.connection_error);
    }
  }

  async function send(text) {
    if (!text.trim()) return;
    const clientId = newId();
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const data = await api("POST", "/api/webchat/messages", { text: text, client_id: clientId, lang: lang, after: lastId });
        data.messages.forEach(render);
        showStatus("");
        return;
      } catch (error) {
        if (error.status && error.status < 500) { showStatus(error.message); return; }
        showStatus(strings.connection_error);
        await new Promise(function (resolve) { setTimeout(resolve, 1000 * (attempt + 1)); });
      }
    }
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const text = input.value;
    input.value = "";
    send(text);
  });

  async function start() {
    try {
      const ui = await api("GET", "/api/webchat/ui?lang=" + encodeURIComponent(lang));
      strings = ui.strings;
      lang = ui.lang;
      document.title = strings.title;
      document.getElementById("title").textContent = strings.title;
      document.getElementById("send").textContent = strings.send;
      input.placeholder = strings.placeholder;
      document.documentElement.lang = lang;
      await ensureToken();
      await poll();
      if (!log.children.length) {
        const welcome = document.createElement("li");
        welcome.className = "msg bot welcome";
        welcome.textContent = ui.welcome;
        log.appendChild(welcome);
      }
    } catch (error) {
      showStatus(strings.connection_error);
    }
    setInterval(poll, POLL_MS);
  }

  start();
})();
