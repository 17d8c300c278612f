// Drives a page in headless Chromium over the DevTools protocol, as a person would see it:
// opens URL, waits until the JavaScript expression CONDITION is true (the page may keep a
// live connection open, such as server-sent events), saves a screenshot to SHOT, and prints
// the rendered DOM on stdout.
//
//   node --experimental-websocket tests/browser/page.mjs URL SHOT CONDITION [TIMEOUT_MS]
//
// Node 20's WebSocket and fetch, Debian's chromium: nothing to install from npm.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, shot, condition, timeoutArg] = process.argv.slice(2);
const timeout = Number(timeoutArg || 30000);
const profile = mkdtempSync(join(tmpdir(), "eip-chromium-"));
const browser = spawn("chromium", [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
  "--no-first-run", "--remote-debugging-port=0", `--user-data-dir=${profile}`,
  "--window-size=1400,1300", "about:blank",
], { stdio: ["ignore", "ignore", "pipe"] });
let done = false;
// Stops the browser, waits until it is gone, and removes its profile (best effort: a child
// process of Chromium may still be writing there for a moment).
const finish = async (code) => {
  done = true;
  if (browser.exitCode === null && browser.signalCode === null) {
    const gone = new Promise((resolve) => browser.once("exit", resolve));
    browser.kill("SIGKILL");
    await gone;
  }
  try {
    rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  } catch (e) {
    console.error(`leaving ${profile}: ${e.message}`);
  }
  process.exit(code);
};
const fail = (why) => { console.error(why); finish(1); };
setTimeout(() => fail(`timed out after ${timeout} ms waiting for: ${condition}`), timeout).unref();

const port = await new Promise((resolve) => {
  let text = "";
  browser.stderr.on("data", (chunk) => {
    text += chunk;
    const m = text.match(/DevTools listening on ws:\/\/127\.0\.0\.1:(\d+)\//);
    if (m) resolve(m[1]);
  });
  browser.on("exit", (code) => { if (!done) fail(`chromium exited (${code}): ${text}`); });
});
const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
const page = targets.find((t) => t.type === "page");
const ws = new WebSocket(page.webSocketDebuggerUrl);
await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
let next = 0;
const pending = new Map();
ws.onmessage = (m) => {
  const msg = JSON.parse(m.data);
  if (msg.id && pending.has(msg.id)) { pending.get(msg.id)(msg); pending.delete(msg.id); }
};
const send = (method, params = {}) => new Promise((resolve) => {
  const id = ++next;
  pending.set(id, resolve);
  ws.send(JSON.stringify({ id, method, params }));
});
const evaluate = async (expression) => {
  const r = await send("Runtime.evaluate", { expression, returnByValue: true });
  return r.result && r.result.result ? r.result.result.value : undefined;
};
await send("Page.enable");
await send("Emulation.setDeviceMetricsOverride", { width: 1400, height: 1300, deviceScaleFactor: 1, mobile: false });
await send("Page.navigate", { url });
while (!(await evaluate(`!!(${condition})`))) await new Promise((r) => setTimeout(r, 200));
const png = await send("Page.captureScreenshot", { format: "png" });
writeFileSync(shot, Buffer.from(png.result.data, "base64"));
const dom = await evaluate("document.documentElement.outerHTML");
ws.close();
process.stdout.write(dom, () => finish(0));
