// End-to-end test of the wsloop demo page (html/index.html) in real headless Chromium.
//
//   WSLOOP_URL=http://127.0.0.1:PORT/ node --test        (from tests/browser)
//
// Env: WSLOOP_URL (required) base URL of a running wsloop; WSLOOP_TLS_URL (optional) https://
// base URL of a wsloop with --tls-cert/--tls-key (self-signed is fine: certificate errors are
// ignored), whose page is then loaded and exercised over https:// and wss:// too;
// WSLOOP_PROTOCOL_URL (optional) base URL of a wsloop with `--protocol chat`, where a socket
// asking for the subprotocol "chat" must open; SCREENSHOT (optional) where to
// save a screenshot of page 1, default <repo>/target/browser/demo.png (a "-dark" twin is
// saved beside it); CHROMIUM (optional) browser binary, default /usr/bin/chromium.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createHash } from "node:crypto";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, "..", "..");
const BASE = process.env.WSLOOP_URL;
const TLS_BASE = process.env.WSLOOP_TLS_URL;
const PROTOCOL_BASE = process.env.WSLOOP_PROTOCOL_URL;
const SHOT = process.env.SCREENSHOT
  ? path.resolve(process.env.SCREENSHOT)
  : path.join(repoRoot, "target", "browser", "demo.png");
const SHOT_DARK = SHOT.replace(/(\.png)?$/i, "-dark.png");
const EXE = process.env.CHROMIUM || "/usr/bin/chromium";
const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  // The TLS run's server has a self-signed certificate (also for wss://, which Playwright's
  // ignoreHTTPSErrors does not reach in every Chromium build).
  ...(TLS_BASE ? ["--ignore-certificate-errors"] : []),
];
const STEP = { timeout: 60_000 };

let browser, ctx1, ctx2, page1, page2, ctxTls, pageTls;
/** Console errors/warnings, page errors and failed requests, per page. */
const problems = { page1: [], page2: [], pageTls: [] };

function watch(page, name) {
  const list = problems[name];
  page.on("console", (msg) => {
    if (msg.type() === "error" || msg.type() === "warning") {
      list.push(`console.${msg.type()}: ${msg.text()} @ ${JSON.stringify(msg.location())}`);
    }
  });
  page.on("pageerror", (err) => list.push(`pageerror: ${err.stack || err}`));
  page.on("requestfailed", (req) => {
    list.push(`requestfailed: ${req.method()} ${req.url()}: ${req.failure()?.errorText}`);
  });
  page.on("response", (res) => {
    if (res.status() >= 400) list.push(`HTTP ${res.status()} for ${res.url()}`);
  });
}

async function openPage(context, name, base = BASE) {
  const page = await context.newPage();
  watch(page, name);
  const res = await page.goto(base, { waitUntil: "load" });
  assert.ok(res, "navigation produced a response");
  assert.equal(res.status(), 200, `GET ${base} status`);
  assert.match(res.headers()["content-type"] || "", /^text\/html/i, "page content-type");
  return page;
}

/** Types `text` into the echo box, clicks Send, waits for the identical echo in the log. */
async function echoViaUi(page, text) {
  const before = await page.locator("#echo-log li[data-rtt]").count();
  await page.fill("#echo-input", text);
  assert.equal(await page.inputValue("#echo-input"), text, "input holds the text");
  await page.click("#echo-send");
  const handle = await page.waitForFunction(
    ([want, n]) => {
      const items = [...document.querySelectorAll("#echo-log li[data-rtt]")].slice(n);
      return items.find((li) => li.querySelector(".text")?.textContent === want) || null;
    },
    [text, before],
    { timeout: 10_000 },
  );
  const info = await handle.evaluate((li) => ({
    bad: li.classList.contains("bad"),
    rtt: Number(li.dataset.rtt),
    rttText: li.querySelector(".rtt")?.textContent,
  }));
  assert.equal(info.bad, false, `echo of ${JSON.stringify(text)} matched what was sent`);
  assert.ok(Number.isFinite(info.rtt) && info.rtt >= 0, `RTT shown (${info.rttText})`);
  assert.equal(await page.inputValue("#echo-input"), "", "input cleared after send");
}

/** Sends a chat line through the UI of `from`, waits until `to` shows it under `nick`. */
async function chatViaUi(from, to, nick, text) {
  await from.fill("#chat-input", text);
  await from.click("#chat-send");
  const seen = (page) =>
    page.waitForFunction(
      ([n, t]) =>
        [...document.querySelectorAll("#chat-log li")].some(
          (li) => li.dataset.nick === n && li.querySelector(".msg")?.textContent === t,
        ),
      [nick, text],
      { timeout: 10_000 },
    );
  await seen(to);
  await seen(from); // the room includes the sender
}

before(async () => {
  assert.ok(BASE, "set WSLOOP_URL to the server's base URL, e.g. http://127.0.0.1:9001/");
  for (const base of [BASE, TLS_BASE, PROTOCOL_BASE].filter(Boolean)) {
    const host = new URL(base).hostname;
    assert.ok(["127.0.0.1", "localhost", "[::1]"].includes(host), `loopback only, got ${host}`);
  }
  browser = await chromium.launch({ executablePath: EXE, headless: true, args: ARGS, timeout: 60_000 });
  ctx1 = await browser.newContext({ viewport: { width: 1280, height: 900 }, colorScheme: "light" });
  ctx2 = await browser.newContext({ viewport: { width: 900, height: 800 }, colorScheme: "light" });
});

after(async () => {
  await browser?.close();
});

test("page 1 loads and both sockets open", STEP, async () => {
  page1 = await openPage(ctx1, "page1");
  assert.equal(await page1.title(), "wsloop · WebSocket demo");
  await page1.waitForSelector('#state[data-state="open"]', { timeout: 15_000 });
  await page1.waitForSelector('#chat-state[data-state="open"]', { timeout: 15_000 });
  await page1.evaluate(() => window.wsloop.ready);
  assert.equal(await page1.textContent("#state-text"), "open");
  // The page connects back to where it was loaded from.
  const endpoint = await page1.textContent("#endpoint");
  assert.equal(endpoint, "ws://" + new URL(BASE).host);
  const fav = await page1.request.get(new URL("favicon.svg", BASE).href);
  assert.equal(fav.status(), 200, "favicon.svg is served");
  assert.match(fav.headers()["content-type"] || "", /svg/, "favicon content-type");
  const root = await page1.request.get(BASE);
  const index = await page1.request.get(new URL("index.html", BASE).href);
  assert.equal(index.status(), 200, "GET /index.html");
  assert.equal(await index.text(), await root.text(), "/ and /index.html serve the same page");
});

test("GET /stats returns the documented counters", STEP, async () => {
  const res = await page1.request.get(new URL("/stats", BASE).href);
  assert.equal(res.status(), 200);
  assert.match(res.headers()["content-type"] || "", /json/, "content-type");
  const stats = await res.json();
  const fields = ["open", "accepted", "rejected", "messages_in", "messages_out", "bytes_in", "bytes_out", "protocol_errors"];
  for (const f of fields) {
    assert.ok(Number.isSafeInteger(stats[f]) && stats[f] >= 0, `stats.${f} is a count: ${JSON.stringify(stats[f])}`);
  }
  assert.ok(stats.open >= 2, `page 1's two sockets are open (open=${stats.open})`);
});

test("echo: ASCII through the UI", STEP, async () => {
  await echoViaUi(page1, "Hello, wsloop! 0123456789 ~!@#$%^&*()_+{}|:\"<>?");
});

test("echo: Chinese through the UI", STEP, async () => {
  await echoViaUi(page1, "你好，世界");
});

test("echo: emoji through the UI", STEP, async () => {
  await echoViaUi(page1, "😀🚀👍🏽");
});

test("echo: 1 MiB message comes back byte-identical", STEP, async () => {
  // Mixed 1-, 3- and 4-byte UTF-8 sequences, exactly 1 MiB when encoded.
  const unit = "wsloop 1MiB test · 你好，世界 · 😀🚀👍🏽\n";
  let big = unit.repeat(Math.floor(1048576 / Buffer.byteLength(unit)));
  big += "x".repeat(1048576 - Buffer.byteLength(big));
  assert.equal(Buffer.byteLength(big), 1048576);
  const back = await page1.evaluate((s) => window.wsloop.echo(s), big);
  assert.equal(Buffer.byteLength(back), 1048576, "echo length in bytes");
  const sha = (s) => createHash("sha256").update(s).digest("hex");
  assert.equal(sha(back), sha(big), "echo SHA-256 matches");
  assert.ok(back === big, "echo is identical");
  const shown = await page1.locator("#echo-log li[data-rtt]").last().evaluate((li) => ({
    bad: li.classList.contains("bad"),
    text: li.querySelector(".text").textContent,
  }));
  assert.equal(shown.bad, false);
  assert.match(shown.text, /\(\d[\d,]* chars, 1\.00 MiB\)$/, "log shows a preview of the big echo");
});

test("permessage-deflate: Chromium negotiates it and compressed messages round-trip", STEP, async () => {
  // scripts/browser-test.sh starts wsloop with --deflate; Chromium always offers the extension.
  const result = await page1.evaluate(async () => {
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/deflate-check";
    const ws = new WebSocket(url);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error("deflate socket failed"));
    });
    const text = "compressible text, 你好 😀 ".repeat(2000);
    const back = await new Promise((resolve) => {
      ws.onmessage = (e) => resolve(e.data);
      ws.send(text);
    });
    const extensions = ws.extensions;
    ws.close(1000);
    return { extensions, same: back === text, length: text.length };
  });
  assert.match(result.extensions, /permessage-deflate/, "extension negotiated");
  assert.ok(result.same, "compressed echo of " + result.length + " chars is identical");
  const stats = await (await fetch(new URL("/stats", BASE))).json();
  assert.ok(stats.bytes_in < 1_000_000 + result.length, "the server read compressed bytes");
});

/** The `wsloop_rejected_total{reason="origin"}` counter from the server's /metrics. */
async function originRejections() {
  const text = await (await fetch(new URL("/metrics", BASE))).text();
  const line = text.split("\n").find((l) => l.startsWith('wsloop_rejected_total{reason="origin"} '));
  assert.ok(line, "/metrics has the origin rejection counter");
  return Number(line.split(" ")[1]);
}

/** In the page: opens a WebSocket to `url`, reports whether it opened and its close code. */
function openAndReport(url) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    let opened = false;
    ws.onopen = () => {
      opened = true;
      ws.close(1000);
    };
    ws.onclose = (e) => resolve({ opened, code: e.code });
  });
}

test("origin check: Chromium's WebSocket from a cross-origin page is refused, same-origin is not", STEP, async () => {
  // Cross-site WebSocket hijacking: a page of another origin opens a socket to wsloop with the
  // user's browser. wsloop checks the Origin header Chromium sends against Host by default.
  // The other origin is http://localhost:PORT (loopback too, so Chromium's own local-network
  // access blocking, which stops a public site reaching 127.0.0.1 before wsloop sees it, is
  // not what refuses the socket here) and the socket goes to ws://127.0.0.1:PORT.
  const port = new URL(BASE).port;
  const target = `ws://127.0.0.1:${port}/`;
  const before = await originRejections();
  const other = await ctx1.newPage(); // not watched: the refused socket logs a console error
  await other.goto(`http://localhost:${port}/cross-origin`); // wsloop's 404 page: any document will do
  assert.equal(await other.evaluate(() => location.origin), `http://localhost:${port}`);
  const refused = await other.evaluate(openAndReport, target);
  await other.close();
  assert.deepEqual(refused, { opened: false, code: 1006 }, "cross-origin socket never opens");
  assert.equal((await originRejections()) - before, 1, "wsloop refused it and counted one origin rejection");
  // The demo page's own origin (http://127.0.0.1:PORT, matching Host) is accepted.
  const own = await page1.evaluate(openAndReport, target);
  assert.deepEqual(own, { opened: true, code: 1000 }, "same-origin socket opens and closes cleanly");
  assert.equal((await originRejections()) - before, 1, "no rejection for the same-origin socket");
});

/** In a page: opens `url` asking for `protocols`, sends `text`; reports the outcome. */
function openWithProtocols([url, protocols, text]) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, protocols);
    let opened = false;
    ws.onopen = () => {
      opened = true;
      ws.send(text);
    };
    ws.onmessage = (e) => {
      resolve({ opened, protocol: ws.protocol, echo: e.data });
      ws.close(1000);
    };
    ws.onclose = (e) => resolve({ opened, protocol: ws.protocol, code: e.code });
  });
}

test("subprotocol: new WebSocket(url, [\"chat\"]) opens and echoes with --protocol chat", { ...STEP, skip: !PROTOCOL_BASE }, async () => {
  // Pages that are not watched: the refused socket below logs a console error.
  const asked = await ctx1.newPage();
  await asked.goto(new URL("/subprotocol", PROTOCOL_BASE).href); // wsloop's 404 page: any document will do
  const url = "ws://" + new URL(PROTOCOL_BASE).host + "/";
  const chat = await asked.evaluate(openWithProtocols, [url, ["chat"], "hello chat 你好"]);
  await asked.close();
  assert.deepEqual(chat, { opened: true, protocol: "chat", echo: "hello chat 你好" });
  // Without --protocol the server selects none, and Chromium fails a socket that asked for one.
  const plain = await ctx1.newPage();
  await plain.goto(new URL("/subprotocol", BASE).href);
  const refused = await plain.evaluate(openWithProtocols, ["ws://" + new URL(BASE).host + "/", ["chat"], "x"]);
  await plain.close();
  assert.deepEqual(refused, { opened: false, protocol: "", code: 1006 });
});

test("stats: RTT percentiles and server counters are shown", STEP, async () => {
  await page1.waitForFunction(() => /ms$/.test(document.getElementById("stat-p50").textContent), null, {
    timeout: 5_000,
  });
  for (const id of ["stat-p50", "stat-p90", "stat-p99"]) {
    assert.match(await page1.textContent("#" + id), /^\d[\d.]* ms$/, id);
  }
  // /stats is polled every 2 s; wait for a poll that has seen our two sockets.
  const count = (id) => Number((document.getElementById(id)?.textContent ?? "").replace(/,/g, ""));
  await page1.waitForFunction(
    () => Number((document.getElementById("server-open")?.textContent ?? "").replace(/,/g, "")) >= 2,
    null,
    { timeout: 8_000 },
  );
  const accepted = await page1.evaluate(count, "server-accepted");
  assert.ok(accepted >= 2, `server panel shows >= 2 accepted connections, got ${accepted}`);
  const messagesIn = await page1.textContent("#server-messages_in");
  assert.match(messagesIn, /^\d[\d,]*$/, "server panel shows messages_in");
});

test("chat: two pages see each other's messages", STEP, async () => {
  page2 = await openPage(ctx2, "page2");
  await page2.evaluate(() => window.wsloop.ready);
  await page1.fill("#chat-nick", "alice");
  await page2.fill("#chat-nick", "bob");
  await chatViaUi(page2, page1, "bob", "hi alice, bob here 👋 你好");
  await chatViaUi(page1, page2, "alice", "hello bob! 😀 <b>not bold</b>");
  // Markup in messages is shown as text, never parsed.
  assert.equal(await page1.locator("#chat-log b").count(), 0);
});

test("burst: 500 messages through the UI", STEP, async () => {
  await page1.fill("#burst-n", "500");
  await page1.fill("#burst-size", "64");
  await page1.click("#burst-go");
  await page1.waitForSelector('#burst-result[data-state="done"]', { timeout: 30_000 });
  const text = await page1.textContent("#burst-result");
  assert.match(text, /^500 × 64 B echoed in [\d.]+ ms · [\d,]+ msgs\/s/, text);
  // A second, bigger burst through the hook, to draw a second bar.
  const r = await page1.evaluate(() => window.wsloop.burst(2000, 256));
  assert.equal(r.n, 2000);
  assert.equal(r.mismatches, 0);
  assert.ok(r.rate > 0);
});

test("layout: no horizontal overflow when narrow", STEP, async () => {
  await page1.setViewportSize({ width: 380, height: 800 });
  const overflow = await page1.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `page overflows a 380 px viewport by ${overflow}px`);
  await page1.setViewportSize({ width: 1280, height: 900 });
});

test("no console errors, warnings or page errors", STEP, async () => {
  // Let one more /stats poll and chart redraw happen before judging.
  await page1.waitForTimeout(2_500);
  assert.deepEqual(problems.page1, [], "page 1");
  assert.deepEqual(problems.page2, [], "page 2");
});

test("screenshot of page 1 (light and dark)", STEP, async () => {
  mkdirSync(path.dirname(SHOT), { recursive: true });
  await page1.evaluate(() => {
    for (const id of ["echo-log", "chat-log"]) {
      const l = document.getElementById(id);
      l.scrollTop = l.scrollHeight;
    }
  });
  await page1.screenshot({ path: SHOT, fullPage: true });
  await page1.emulateMedia({ colorScheme: "dark" });
  await page1.waitForTimeout(200); // charts redraw on the colour-scheme change
  await page1.screenshot({ path: SHOT_DARK, fullPage: true });
  await page1.emulateMedia({ colorScheme: "light" });
  console.log(`screenshots: ${SHOT} ${SHOT_DARK}`);
  assert.deepEqual(problems.page1, [], "page 1 after screenshots");
});

// ---- the same page over https:// and wss:// (WSLOOP_TLS_URL) -------------------------------

test("TLS: page loads over https:// and both sockets open over wss://", { ...STEP, skip: !TLS_BASE }, async () => {
  assert.match(TLS_BASE, /^https:/, "WSLOOP_TLS_URL is an https:// URL");
  ctxTls = await browser.newContext({ viewport: { width: 1280, height: 900 }, ignoreHTTPSErrors: true });
  pageTls = await openPage(ctxTls, "pageTls", TLS_BASE);
  await pageTls.waitForSelector('#state[data-state="open"]', { timeout: 15_000 });
  await pageTls.waitForSelector('#chat-state[data-state="open"]', { timeout: 15_000 });
  await pageTls.evaluate(() => window.wsloop.ready);
  assert.equal(await pageTls.textContent("#endpoint"), "wss://" + new URL(TLS_BASE).host);
  const fav = await pageTls.request.get(new URL("favicon.svg", TLS_BASE).href);
  assert.equal(fav.status(), 200, "favicon.svg over https://");
  const stats = await (await pageTls.request.get(new URL("/stats", TLS_BASE).href)).json();
  assert.ok(stats.open >= 2, `the TLS server counts the page's sockets (open=${stats.open})`);
});

test("TLS: echo through the UI and a ~1 MB echo over wss://", { ...STEP, skip: !TLS_BASE }, async () => {
  await echoViaUi(pageTls, "over TLS: Hello 你好 😀");
  const big = "wss 1MiB · 你好 · 😀\n".repeat(40_000);
  const back = await pageTls.evaluate((s) => window.wsloop.echo(s), big);
  assert.ok(back === big, "~1 MB echo over wss:// is identical");
});

test("TLS: burst of 2000 messages over wss://", { ...STEP, skip: !TLS_BASE }, async () => {
  const r = await pageTls.evaluate(() => window.wsloop.burst(2000, 256));
  assert.equal(r.n, 2000);
  assert.equal(r.mismatches, 0);
});

test("TLS: no console errors, warnings or page errors", { ...STEP, skip: !TLS_BASE }, async () => {
  await pageTls.waitForTimeout(2_500);
  assert.deepEqual(problems.pageTls, [], "TLS page");
});
