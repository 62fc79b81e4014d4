// Two headless Chromium pages chat through a real relay with the reference
// web client, and what crossed the relay is not the plaintext.
//
//   node tests/browser/e2ee.test.mjs
//
// Environment: BLINDRELAY_BIN (default target/debug/blindrelay),
// CHROMIUM (default /usr/bin/chromium), OUT_DIR (default
// target/browser-test: screenshots and the relay's log).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, createWriteStream } from "node:fs";
import { createServer } from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";
import WebSocket from "ws";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const bin = process.env.BLINDRELAY_BIN || join(root, "target/debug/blindrelay");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const outDir = process.env.OUT_DIR || join(root, "target/browser-test");
mkdirSync(outDir, { recursive: true });
const logPath = join(outDir, "relay.log");
const TIMEOUT = 15000;

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

async function startRelay(port, extraEnv = {}, path = logPath) {
  const log = createWriteStream(path, { flags: "a" });
  const relay = spawn(bin, [], {
    env: {
      PATH: process.env.PATH,
      HOST: "127.0.0.1",
      PORT: String(port),
      CONFIG_DIR: "/nonexistent",
      JOIN_TOKEN_SECRET: extraEnv.JOIN_TOKEN_SECRET || randomBytes(32).toString("hex"),
      FEATURE_WEB_CLIENT: "true",
      // The most the relay ever logs: whatever it writes, the plaintext must
      // not be in it.
      LOG_LEVEL: "trace",
      LOG_FORMAT: "json",
      ...extraEnv,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  relay.stdout.pipe(log);
  relay.stderr.pipe(log);
  const exited = new Promise((ok) => relay.once("exit", (code) => ok(code)));
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + TIMEOUT;
  for (;;) {
    try {
      if ((await fetch(`${base}/live`)).ok) break;
    } catch {}
    if (Date.now() > deadline) throw new Error("the relay did not start");
    await new Promise((r) => setTimeout(r, 50));
  }
  return { relay, base, exited };
}

/** A plain WebSocket member of the room: what the relay hands out. */
async function observer(base, room) {
  const res = await fetch(`${base}/v1/rooms/${encodeURIComponent(room)}/tokens`, { method: "POST" });
  assert.equal(res.status, 201, "a token for the observer");
  const { token } = await res.json();
  const ws = new WebSocket(`${base.replace("http", "ws")}/v1/ws`);
  const frames = [];
  const welcome = new Promise((ok, fail) => {
    ws.on("message", (raw) => {
      const f = JSON.parse(raw.toString());
      frames.push(f);
      if (f.type === "welcome") ok(f);
    });
    ws.on("error", fail);
  });
  ws.on("open", () => ws.send(JSON.stringify({ type: "join", token })));
  await welcome;
  return { ws, frames };
}

async function waitFor(what, cond) {
  const deadline = Date.now() + TIMEOUT;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const messagesOf = (page) =>
  page.$$eval('[data-testid="messages"] [data-testid="message"]', (els) =>
    els.map((e) => ({ text: e.textContent, undecryptable: e.classList.contains("undecryptable") })),
  );

async function main() {
  const port = await freePort();
  const { relay, base, exited } = await startRelay(port);
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  let ok = false;
  try {
    // The page carries its own policy; the API keeps the strict one.
    const page = await fetch(`${base}/`);
    assert.match(page.headers.get("content-security-policy"), /script-src 'self'.*connect-src 'self'/);
    const api = await fetch(`${base}/live`);
    assert.match(api.headers.get("content-security-policy"), /^default-src 'none'/);
    assert.doesNotMatch(api.headers.get("content-security-policy"), /script-src/);

    const context = await browser.newContext();
    const alice = await context.newPage();
    const bob = await (await browser.newContext()).newPage();
    const consoleErrors = [];
    for (const p of [alice, bob]) {
      p.on("pageerror", (e) => consoleErrors.push(String(e)));
      p.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
    }

    // Alice creates a room; the invite link carries the key in its fragment.
    await alice.goto(`${base}/`);
    await alice.fill('[data-testid="display-name"]', "Alice");
    await alice.click('[data-testid="create-room"]');
    const invite = alice.locator('[data-testid="invite-link"]');
    await waitFor("the invite link", async () => (await invite.inputValue()).includes("#room="));
    const link = await invite.inputValue();
    const fragment = new URLSearchParams(new URL(link).hash.slice(1));
    const room = fragment.get("room");
    const key = fragment.get("key");
    assert.ok(room && key && key.length === 43, `a 256-bit key in the fragment: ${link}`);
    await waitFor("Alice connected", async () =>
      (await alice.textContent('[data-testid="status"]')).startsWith("connected"));

    // A plain WebSocket member sees everything the relay hands out.
    const spy = await observer(base, room);

    // Bob opens the invite link: a fresh token, a join.
    await bob.goto(link);
    await bob.fill('[data-testid="display-name"]', "Bob");
    await waitFor("Bob connected", async () =>
      (await bob.textContent('[data-testid="status"]')).startsWith("connected"));
    await waitFor("three members on Alice's page", async () =>
      (await alice.$$('[data-testid="members"] li')).length === 3);

    const fromAlice = `the eagle lands at dawn ${randomBytes(4).toString("hex")}`;
    const fromBob = `copy that, bring snacks ${randomBytes(4).toString("hex")}`;
    await alice.fill('[data-testid="message-input"]', fromAlice);
    await alice.click('[data-testid="send"]');
    await waitFor("Alice's message on Bob's page", async () =>
      (await messagesOf(bob)).some((m) => m.text.includes(fromAlice) && m.text.includes("Alice")));
    await bob.fill('[data-testid="message-input"]', fromBob);
    await bob.click('[data-testid="send"]');
    await waitFor("Bob's message on Alice's page", async () =>
      (await messagesOf(alice)).some((m) => m.text.includes(fromBob) && m.text.includes("Bob")));

    // What crossed the relay: ciphertext only, a fresh IV each time.
    await waitFor("two messages at the observer", async () =>
      spy.frames.filter((f) => f.type === "message").length >= 2);
    const seen = spy.frames.filter((f) => f.type === "message");
    const ivs = new Set();
    for (const f of seen) {
      assert.match(f.data, /^v1\.[A-Za-z0-9_-]{16}\.[A-Za-z0-9_-]+$/, "sealed data");
      const bytes = Buffer.from(f.data.split(".")[2], "base64url").toString("latin1");
      for (const secret of [fromAlice, fromBob, "eagle", "snacks", key]) {
        assert.ok(!f.data.includes(secret), `the relay carried ${secret} in clear`);
      }
      for (const secret of [fromAlice, fromBob, "Alice", "Bob", "eagle", "snacks"]) {
        assert.ok(!bytes.includes(secret), `the ciphertext holds ${secret}`);
      }
      ivs.add(f.data.split(".")[1]);
    }
    assert.equal(ivs.size, seen.length, "a fresh IV per message");

    // A message that does not decrypt is shown as such, never as text.
    const forged = `v1.${randomBytes(12).toString("base64url")}.${randomBytes(40).toString("base64url")}`;
    spy.ws.send(JSON.stringify({ type: "send", data: forged }));
    spy.ws.send(JSON.stringify({ type: "send", data: "<img src=x onerror=alert(1)>" }));
    await waitFor("the forgeries flagged on Bob's page", async () =>
      (await messagesOf(bob)).filter((m) => m.undecryptable).length === 2);
    const shown = await messagesOf(bob);
    assert.ok(!shown.some((m) => m.text.includes("onerror")), "undecryptable data is never displayed");

    await alice.screenshot({ path: join(outDir, "alice.png") });
    await bob.screenshot({ path: join(outDir, "bob.png") });
    assert.deepEqual(consoleErrors, [], "no script errors on the pages");
    spy.ws.close();
    ok = { room, key, plaintexts: [fromAlice, fromBob] };
  } finally {
    await browser.close();
    relay.kill("SIGTERM");
    const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r("timeout"), 30000))]);
    if (ok) assert.equal(code, 0, "the relay exits 0 after SIGTERM");
  }

  // The relay's log, at its most verbose, holds neither the texts nor the
  // key nor the display names.
  const log = readFileSync(logPath, "utf8");
  assert.ok(log.length > 0, "the relay logged something");
  for (const secret of [...ok.plaintexts, ok.key, "Alice", "Bob"]) {
    assert.ok(!log.includes(secret), `the relay's log holds ${secret}`);
  }
  console.log(`browser e2ee test: ok (screenshots in ${outDir})`);
}

/** A page whose instance restarts: it is closed with 1012, backs off, mints
 * a new token and joins again, in cluster mode where the room outlives the
 * instance. */
async function reconnects() {
  const redisPort = await freePort();
  const redis = spawn("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  const port = await freePort();
  const env = {
    REDIS_URL: `redis://127.0.0.1:${redisPort}`,
    JOIN_TOKEN_SECRET: randomBytes(32).toString("hex"),
    CLUSTER_SECRET: randomBytes(32).toString("hex"),
    SHUTDOWN_TIMEOUT_MS: "3000",
  };
  const clusterLog = join(outDir, "relay-cluster.log");
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: ["--no-sandbox", "--disable-dev-shm-usage"] });
  let first = null;
  let second = null;
  try {
    await new Promise((r) => setTimeout(r, 200));
    first = await startRelay(port, env, clusterLog);
    const base = first.base;
    await waitFor("the instance ready", async () => (await fetch(`${base}/ready`)).ok);
    const carol = await browser.newPage();
    const statuses = [];
    await carol.exposeFunction("recordStatus", (s) => statuses.push(s));
    await carol.goto(`${base}/`);
    await carol.evaluate(() => {
      const el = document.querySelector('[data-testid="status"]');
      new MutationObserver(() => window.recordStatus(el.textContent)).observe(el, { childList: true, characterData: true, subtree: true });
    });
    await carol.fill('[data-testid="display-name"]', "Carol");
    await carol.click('[data-testid="create-room"]');
    await waitFor("Carol connected", async () =>
      (await carol.textContent('[data-testid="status"]')).startsWith("connected"));
    const link = await carol.locator('[data-testid="invite-link"]').inputValue();
    const room = new URLSearchParams(new URL(link).hash.slice(1)).get("room");

    first.relay.kill("SIGTERM");
    assert.equal(await first.exited, 0, "the first instance exits 0");
    await waitFor("Carol backing off", async () => statuses.some((s) => s.includes("closed: 1012")));
    second = await startRelay(port, env, clusterLog);
    await waitFor("the new instance ready", async () => (await fetch(`${base}/ready`)).ok);
    await waitFor("Carol back", async () =>
      (await carol.textContent('[data-testid="status"]')).startsWith("connected"));

    const spy = await observer(base, room);
    const text = `after the restart ${randomBytes(4).toString("hex")}`;
    await carol.fill('[data-testid="message-input"]', text);
    await carol.click('[data-testid="send"]');
    await waitFor("Carol's message after the restart", async () =>
      spy.frames.some((f) => f.type === "message"));
    assert.ok(!JSON.stringify(spy.frames).includes(text));
    spy.ws.close();
    await carol.screenshot({ path: join(outDir, "reconnected.png") });
    console.log(`browser reconnect test: ok (${statuses.filter((s) => s.startsWith("reconnecting")).length} status changes while away)`);
  } finally {
    await browser.close();
    for (const r of [first, second]) r?.relay.kill("SIGTERM");
    if (second) await second.exited;
    redis.kill("SIGTERM");
  }
}

main().then(reconnects).catch((e) => {
  console.error(e);
  process.exit(1);
});
