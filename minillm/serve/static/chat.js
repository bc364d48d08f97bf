// minillm chat page: keeps the conversation in memory, sends it whole to
// /v1/chat/completions with stream: true, and shows the reply as its server-sent
// events arrive. Stop aborts the fetch; the server sees the connection close and
// frees the sequence's slot. Each reply ends with its token count and tokens/s
// (from the first token to the last, so the prompt's time is not counted).
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];          // [{role, content}] of finished turns
let modelName = null;
let controller = null;       // AbortController of the reply being streamed

async function loadModel() {
  try {
    const r = await fetch("/v1/models");
    const body = await r.json();
    modelName = body.data[0].id;
    $("model").textContent = `${modelName} · context ${body.data[0].max_model_len}`;
    const limit = body.data[0].max_tokens || body.data[0].max_model_len;
    $("max-tokens").max = limit;
    $("max-tokens").value = Math.min(Number($("max-tokens").value), limit);
  } catch (e) {
    $("model").textContent = "server not reachable";
  }
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `message ${role}`;
  const content = document.createElement("span");
  content.className = "content";
  content.textContent = text;
  div.appendChild(content);
  $("messages").appendChild(div);
  div.scrollIntoView({block: "end"});
  return div;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

// Yields the JSON payload of each `data:` event of a server-sent-events body.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function send(text) {
  history.push({role: "user", content: text});
  addMessage("user", text);
  const div = addMessage("assistant", "");
  div.classList.add("streaming");
  const content = div.querySelector(".content");
  const stats = document.createElement("span");
  stats.className = "stats";
  controller = new AbortController();
  setBusy(true);
  let reply = "", tokens = 0, first = null, usage = null, finish = null, error = null;
  const body = {
    model: modelName, messages: history, stream: true, stream_options: {include_usage: true},
    temperature: Number($("temperature").value), max_tokens: Math.max(1, Math.floor(Number($("max-tokens").value))),
  };
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify(body), signal: controller.signal,
    });
    if (!r.ok) {
      const e = await r.json().catch(() => ({}));
      throw new Error((e.error && e.error.message) || `HTTP ${r.status}`);
    }
    for await (const chunk of events(r)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const piece = (choice.delta && choice.delta.content) || "";
        if (piece) {
          if (first === null) first = performance.now();
          tokens += 1;
          reply += piece;
          content.textContent = reply;
          div.scrollIntoView({block: "end"});
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
  } catch (e) {
    if (e.name === "AbortError") finish = "stopped";
    else error = e.message;
  }
  controller = null;
  div.classList.remove("streaming");
  setBusy(false);
  if (error !== null) {
    div.classList.add("error");
    content.textContent = reply + (reply ? "\n" : "") + `error: ${error}`;
    history.pop();          // the turn failed: do not send it again
    return;
  }
  history.push({role: "assistant", content: reply});
  const n = usage ? usage.completion_tokens : tokens;
  const seconds = first === null ? 0 : (performance.now() - first) / 1000;
  const rate = seconds > 0 && n > 1 ? `${((n - 1) / seconds).toFixed(1)} tokens/s` : "";
  stats.textContent = [`${n} tokens`, rate, finish ? `(${finish})` : ""].filter(Boolean).join(" · ");
  div.appendChild(stats);
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("prompt").value;
  if (!text.trim() || controller) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("clear").addEventListener("click", () => {
  if (controller) controller.abort();
  history.length = 0;
  $("messages").replaceChildren();
});
loadModel();
