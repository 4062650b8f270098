// kvserve chat page: vanilla JS, no build step. It talks to the server's own OpenAI-compatible API
// (paths relative to the page, so it also works behind a reverse proxy under a prefix).
"use strict";

const KEY_STORE = "kvserve.apiKey"; // localStorage entry of the API key
const MODEL_STORE = "kvserve.model"; // the model last picked

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"), system: $("system"), temperature: $("temperature"), maxTokens: $("max-tokens"),
  log: $("log"), composer: $("composer"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
  clear: $("clear"), stats: $("stats"), error: $("error"),
  keyBox: $("key-box"), key: $("api-key"), keyToggle: $("key-toggle"), keyForget: $("key-forget"),
};

const conversation = []; // the turns so far, {role, content}; sent as `messages` each turn
let controller = null; // the AbortController of the request in flight, if any

// ---- requests ------------------------------------------------------------------------------------

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = localStorage.getItem(KEY_STORE);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// The message of an error response: OpenAI's envelope {"error": {"message"}}, else the status.
async function errorMessage(resp) {
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return resp.statusText || "request failed";
}

async function showFailure(resp) {
  const message = await errorMessage(resp);
  if (resp.status === 401) askForKey();
  showError(`Error ${resp.status}: ${message}`);
}

// Server-sent events read with fetch: frames end with a blank line, each `data: <json>`; [DONE] ends.
async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = frame.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trimStart()).join("\n");
        if (!data) continue; // a ':' keep-alive comment
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  } finally {
    reader.cancel().catch(() => {}); // stops the download when the reader quits early
  }
}

// ---- models and the API key ----------------------------------------------------------------------

async function loadModels() {
  let resp;
  try {
    resp = await fetch("v1/models", { headers: headers() });
  } catch (e) {
    showError(`Cannot reach the server: ${e.message}`);
    return;
  }
  if (resp.status === 503) { // still loading the model: try again shortly
    setStats("idle", "The server is loading the model…");
    setTimeout(loadModels, 1000);
    return;
  }
  if (!resp.ok) return showFailure(resp);
  const { data } = await resp.json();
  const wanted = ui.model.value || localStorage.getItem(MODEL_STORE);
  ui.model.replaceChildren(...data.map((m) => new Option(m.id, m.id)));
  if (data.some((m) => m.id === wanted)) ui.model.value = wanted;
  ui.model.disabled = false;
  showError("");
  setStats("idle", "");
}

function askForKey() {
  ui.keyBox.hidden = false;
  ui.key.value = localStorage.getItem(KEY_STORE) || "";
  ui.key.focus();
}

function saveKey(event) {
  event.preventDefault();
  const key = ui.key.value.trim();
  if (key) localStorage.setItem(KEY_STORE, key);
  else localStorage.removeItem(KEY_STORE);
  ui.keyBox.hidden = true;
  showError("");
  loadModels();
}

// ---- the page --------------------------------------------------------------------------------------

function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = !message;
}

function setStats(state, text) {
  ui.stats.dataset.state = state; // idle | waiting | streaming | done | stopped | error
  ui.stats.textContent = text;
}

function addMessage(role, text) {
  const item = document.createElement("div");
  item.className = `msg ${role}`;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  item.append(who, body);
  ui.log.append(item);
  ui.log.scrollTop = ui.log.scrollHeight;
  return item;
}

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
  ui.clear.disabled = busy;
  document.body.classList.toggle("busy", busy);
}

// "N tokens · X tok/s · first token Y s": from the final usage chunk, or counting chunks while live.
function statsText(s, live) {
  const now = performance.now();
  const tokens = s.usage ? s.usage.completion_tokens : s.chunks;
  const seconds = (now - s.started) / 1000;
  const rate = tokens / Math.max(seconds, 1e-3);
  const parts = [`${live ? "~" : ""}${tokens} tokens`, `${rate.toFixed(1)} tok/s`];
  if (s.first) parts.push(`first token ${((s.first - s.started) / 1000).toFixed(2)} s`);
  parts.push(`${seconds.toFixed(2)} s`);
  if (s.finish === "length") parts.push("hit max_tokens");
  return parts.join(" · ");
}

// The request body of one turn: the system prompt, the conversation, the sampling settings.
function requestBody() {
  const messages = [];
  const system = ui.system.value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...conversation);
  const body = { model: ui.model.value, messages, stream: true, stream_options: { include_usage: true } };
  const temperature = parseFloat(ui.temperature.value);
  if (!Number.isNaN(temperature)) body.temperature = temperature;
  const maxTokens = parseInt(ui.maxTokens.value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  return body;
}

async function send(text) {
  showError("");
  conversation.push({ role: "user", content: text });
  const userItem = addMessage("user", text);
  // Takes the turn back (an error before any reply text): the message returns to the input box.
  const undo = () => {
    conversation.pop();
    userItem.remove();
    if (!ui.prompt.value) ui.prompt.value = text;
  };
  controller = new AbortController();
  setBusy(true);
  const s = { started: performance.now(), first: 0, chunks: 0, usage: null, finish: null };
  setStats("waiting", "Waiting for the reply…");
  let resp;
  try {
    resp = await fetch("v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal: controller.signal,
    });
  } catch (e) {
    undo();
    finish(e.name === "AbortError" ? "stopped" : "error", "Stopped.");
    if (e.name !== "AbortError") showError(`Cannot reach the server: ${e.message}`);
    return;
  }
  if (!resp.ok) {
    undo();
    finish("error", "");
    await showFailure(resp);
    return;
  }
  const replyItem = addMessage("assistant", "");
  const replyText = replyItem.querySelector(".text");
  let content = "";
  let outcome = "done";
  try {
    for await (const event of sseEvents(resp.body)) {
      if (event.error) { // the server ended the stream with an error event
        showError(`Error: ${event.error.message}`);
        outcome = "error";
        break;
      }
      const choice = event.choices && event.choices[0];
      const delta = choice && choice.delta && choice.delta.content;
      if (delta) {
        content += delta;
        replyText.textContent = content;
        s.chunks += 1;
        s.first = s.first || performance.now();
        ui.log.scrollTop = ui.log.scrollHeight;
        setStats("streaming", statsText(s, true));
      }
      if (choice && choice.finish_reason) s.finish = choice.finish_reason;
      if (event.usage) s.usage = event.usage;
    }
  } catch (e) {
    outcome = e.name === "AbortError" ? "stopped" : "error";
    if (outcome === "error") showError(`The stream broke off: ${e.message}`);
  }
  if (content) {
    conversation.push({ role: "assistant", content }); // a stopped reply stays part of the conversation
  } else {
    replyItem.remove();
    undo();
  }
  replyItem.classList.add(outcome);
  finish(outcome, statsText(s, false) + (outcome === "stopped" ? " · stopped" : ""));
}

function finish(outcome, text) {
  controller = null;
  setBusy(false);
  setStats(outcome, text);
  ui.prompt.focus();
}

// ---- wiring ----------------------------------------------------------------------------------------

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.prompt.value.trim();
  if (!text || controller) return;
  if (!ui.model.value) {
    showError("No model to talk to yet.");
    return;
  }
  ui.prompt.value = "";
  send(text);
});
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
ui.stop.addEventListener("click", () => controller && controller.abort());
ui.clear.addEventListener("click", () => {
  conversation.length = 0;
  ui.log.replaceChildren();
  showError("");
  setStats("idle", "");
});
ui.model.addEventListener("change", () => localStorage.setItem(MODEL_STORE, ui.model.value));
ui.keyBox.addEventListener("submit", saveKey);
ui.keyToggle.addEventListener("click", () => (ui.keyBox.hidden ? askForKey() : (ui.keyBox.hidden = true)));
ui.keyForget.addEventListener("click", () => {
  localStorage.removeItem(KEY_STORE);
  ui.key.value = "";
  ui.key.focus();
});

ui.model.disabled = true;
loadModels();
