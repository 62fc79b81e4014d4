// blindrelay reference web client: end-to-end encrypted chat over the relay.
//
// The scheme (docs/client.md):
// - A room key of 256 random bits is made in the browser that creates the
//   room. It travels only in the invite link's fragment (#room=...&key=...),
//   which browsers never send to any server.
// - Messages are encrypted with AES-256-GCM under a key derived from the room
//   key with HKDF-SHA-256 (salt and info name this scheme and the room), with
//   a fresh random 96-bit IV per message and the room id as additional data:
//   a ciphertext moved to another room does not decrypt.
// - The display name travels inside the ciphertext, with the text.
// - What the relay sees: the room id, member ids, and `data` strings of the
//   form "v1.<iv>.<ciphertext>" (base64url).

const SCHEME = "blindrelay-web-v1";
const te = new TextEncoder();
const td = new TextDecoder();

const $ = (id) => document.getElementById(id);
const ui = {
  name: $("display-name"),
  create: $("create-room"),
  invite: $("invite"),
  inviteLink: $("invite-link"),
  copy: $("copy-invite"),
  status: $("status"),
  room: $("room"),
  members: $("members"),
  messages: $("messages"),
  composer: $("composer"),
  input: $("message-input"),
};

// ---------------------------------------------------------------- encoding

function b64url(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function unb64url(text) {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) throw new Error("not base64url");
  const s = atob(text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4));
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

// ---------------------------------------------------------------- crypto

/** The message key of a room: HKDF-SHA-256 over the 32-byte room key. */
async function messageKey(roomKey, roomId) {
  const base = await crypto.subtle.importKey("raw", roomKey, "HKDF", false, ["deriveKey"]);
  return crypto.subtle.deriveKey(
    { name: "HKDF", hash: "SHA-256", salt: te.encode(SCHEME), info: te.encode(`message key|${roomId}`) },
    base,
    { name: "AES-GCM", length: 256 },
    false,
    ["encrypt", "decrypt"],
  );
}

async function seal(key, roomId, payload) {
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const ct = await crypto.subtle.encrypt(
    { name: "AES-GCM", iv, additionalData: te.encode(`${SCHEME}|${roomId}`) },
    key,
    te.encode(JSON.stringify(payload)),
  );
  return `v1.${b64url(iv)}.${b64url(new Uint8Array(ct))}`;
}

/** The payload of a sealed message, or null when it does not decrypt. */
async function open(key, roomId, data) {
  try {
    const [version, iv, ct] = data.split(".");
    if (version !== "v1" || !iv || !ct) return null;
    const plain = await crypto.subtle.decrypt(
      { name: "AES-GCM", iv: unb64url(iv), additionalData: te.encode(`${SCHEME}|${roomId}`) },
      key,
      unb64url(ct),
    );
    const payload = JSON.parse(td.decode(plain));
    if (typeof payload.text !== "string" || typeof payload.name !== "string") return null;
    return payload;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------- state

const state = {
  roomId: null,
  roomKey: null, // Uint8Array(32)
  key: null, // CryptoKey
  me: null, // own member id
  names: new Map(), // member id -> display name learned from its messages
  members: new Set(),
  ws: null,
  attempt: 0, // reconnect attempts since the last good join
  token: null, // a token minted for the next join
  sent: 0,
};

function setStatus(text) {
  ui.status.textContent = text;
}

function displayName() {
  return ui.name.value.trim().slice(0, 40) || "anonymous";
}

function short(id) {
  return id.slice(0, 6);
}

function renderMembers() {
  ui.members.replaceChildren();
  const ids = [state.me, ...[...state.members].filter((m) => m !== state.me)].filter(Boolean);
  for (const id of ids) {
    const li = document.createElement("li");
    li.dataset.member = id;
    const name = id === state.me ? `${displayName()} (you)` : state.names.get(id);
    li.textContent = name ? `${name} · ${short(id)}` : short(id);
    ui.members.append(li);
  }
}

function addMessage({ name, text, mine = false, kind = "message" }) {
  const li = document.createElement("li");
  if (kind === "message") {
    li.dataset.testid = "message";
    li.className = mine ? "mine" : "";
    const who = document.createElement("span");
    who.className = "name";
    who.textContent = name;
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text; // never innerHTML: names and texts are untrusted
    li.append(who, body);
  } else if (kind === "undecryptable") {
    li.dataset.testid = "message";
    li.className = "undecryptable";
    li.textContent = `⚠ a message from ${short(name)} could not be decrypted (wrong key, or tampered with)`;
  } else {
    li.className = "system";
    li.textContent = text;
  }
  ui.messages.append(li);
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

// ---------------------------------------------------------------- HTTP API

async function api(path) {
  const res = await fetch(path, { method: "POST", headers: { "content-type": "application/json" } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = new Error(body?.error?.message || `HTTP ${res.status}`);
    err.status = res.status;
    err.retryAfter = Number(res.headers.get("retry-after")) || 0;
    throw err;
  }
  return body;
}

async function mintToken() {
  const body = await api(`/v1/rooms/${encodeURIComponent(state.roomId)}/tokens`);
  return body.token;
}

// ---------------------------------------------------------------- session

// Closes after which a client should come back (elsewhere, later).
const RECONNECT = new Set([1006, 1011, 1012, 1013]);
const FATAL = {
  1008: "refused by the relay",
  4401: "the invite is no longer valid",
  4403: "the room is full",
  4409: "this join token was already used",
  4429: "rate limited: sending too fast",
  4413: "too slow to keep up",
};

function connect(token) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/v1/ws`);
  state.ws = ws;
  setStatus(state.attempt ? "reconnecting" : "connecting");
  ws.onopen = () => ws.send(JSON.stringify({ type: "join", token }));
  ws.onmessage = (ev) => onFrame(ev.data).catch((e) => console.error("frame", e));
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    state.ws = null;
    ui.input.disabled = true;
    if (ev.code === 1000) {
      setStatus("left the room");
    } else if (RECONNECT.has(ev.code) || !FATAL[ev.code]) {
      scheduleReconnect(ev.code);
    } else {
      setStatus(`disconnected: ${FATAL[ev.code]} (${ev.code})`);
    }
  };
}

/** Full jitter over a capped exponential backoff: clients of a restarting
 * instance spread out instead of coming back together. */
function scheduleReconnect(code) {
  state.attempt += 1;
  const cap = Math.min(15000, 500 * 2 ** Math.min(state.attempt, 5));
  const delay = 250 + Math.random() * cap;
  setStatus(`reconnecting in ${(delay / 1000).toFixed(1)} s (closed: ${code})`);
  setTimeout(async () => {
    try {
      connect(await mintToken()); // a fresh single-use token each time
    } catch (e) {
      if (e.status === 404) {
        setStatus("the room no longer exists");
      } else {
        scheduleReconnect(e.status || code);
      }
    }
  }, delay);
}

async function onFrame(text) {
  let f;
  try {
    f = JSON.parse(text);
  } catch {
    return;
  }
  switch (f.type) {
    case "welcome":
      state.me = f.member;
      state.members = new Set(f.members);
      state.attempt = 0;
      ui.room.hidden = false;
      ui.input.disabled = false;
      setStatus(`connected: ${f.members.length + 1} in the room`);
      renderMembers();
      break;
    case "member_joined":
      state.members.add(f.member);
      addMessage({ kind: "system", text: `${short(f.member)} joined` });
      renderMembers();
      break;
    case "member_left":
      state.members.delete(f.member);
      addMessage({
        kind: "system",
        text: `${state.names.get(f.member) || short(f.member)} left`,
      });
      renderMembers();
      break;
    case "message": {
      const payload = await open(state.key, state.roomId, f.data);
      if (!payload) {
        addMessage({ kind: "undecryptable", name: f.from });
        break;
      }
      const name = payload.name.slice(0, 40);
      if (state.names.get(f.from) !== name) {
        state.names.set(f.from, name);
        renderMembers();
      }
      addMessage({ name, text: payload.text });
      break;
    }
    case "notice":
      if (f.code === "cluster_degraded") {
        setStatus("connected, but the relay lost its cluster link: messages from other servers may be missed");
      } else if (f.code === "cluster_restored") {
        setStatus("connected: cluster link restored (messages in between may have been missed)");
      }
      addMessage({ kind: "system", text: `relay notice: ${f.code}` });
      break;
    case "error":
      addMessage({ kind: "system", text: `not sent: ${f.message}` });
      break;
    default:
      break; // ack and anything newer
  }
}

async function send(text) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN || !text) return;
  const data = await seal(state.key, state.roomId, { name: displayName(), text, ts: Date.now() });
  state.sent += 1;
  state.ws.send(JSON.stringify({ type: "send", data, id: String(state.sent) }));
  addMessage({ name: displayName(), text, mine: true });
}

// ---------------------------------------------------------------- wiring

async function enterRoom(roomId, roomKey, token) {
  state.roomId = roomId;
  state.roomKey = roomKey;
  state.key = await messageKey(roomKey, roomId);
  const link = `${location.origin}/#room=${encodeURIComponent(roomId)}&key=${b64url(roomKey)}`;
  ui.inviteLink.value = link;
  ui.invite.hidden = false;
  ui.create.disabled = true;
  // The fragment keeps the key across a reload; it never reaches a server.
  history.replaceState(null, "", link);
  connect(token ?? (await mintToken()));
}

ui.create.addEventListener("click", async () => {
  ui.create.disabled = true;
  try {
    const created = await api("/v1/rooms");
    const roomKey = crypto.getRandomValues(new Uint8Array(32));
    await enterRoom(created.room, roomKey, created.token);
  } catch (e) {
    ui.create.disabled = false;
    setStatus(`could not create a room: ${e.message}`);
  }
});

ui.copy.addEventListener("click", () => {
  ui.inviteLink.select();
  navigator.clipboard?.writeText(ui.inviteLink.value).catch(() => {});
});

ui.composer.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = ui.input.value.trim();
  ui.input.value = "";
  send(text).catch((e) => setStatus(`could not send: ${e.message}`));
});

ui.input.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    ui.composer.requestSubmit();
  }
});

ui.name.addEventListener("change", renderMembers);

// Opened from an invite link: join the room it names with the key it holds.
const params = new URLSearchParams(location.hash.slice(1));
if (params.get("room") && params.get("key")) {
  let roomKey = null;
  try {
    roomKey = unb64url(params.get("key"));
  } catch {
    roomKey = null;
  }
  if (!roomKey || roomKey.length !== 32) {
    setStatus("this invite link is damaged: its key is not 32 bytes of base64url");
  } else {
    enterRoom(params.get("room"), roomKey).catch((e) => setStatus(`could not join: ${e.message}`));
  }
}
