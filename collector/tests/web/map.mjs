// Drives the coupling map in Debian's Chromium, for collector/tests/web.rs
// and `cargo xtask demo --check`.
//
// Usage: node map.mjs URL TOKEN OUT_DIR
// It opens URL (with TOKEN as the Basic password, if not empty), waits for
// the page's first update and prints one JSON line: {"event":"loaded",...}.
// Then it reads commands, one per line, and answers each with a JSON line:
//   next             wait for the page's next update (a poll), then the map
//   grown N          wait until the map has more than N nodes, then the map
//   select SYMPTOM   click that symptom of the honesty test, then the map
//   zoom             zoom in with the wheel, then the map
//   shot NAME        a screenshot, OUT_DIR/NAME.png
//   time             the time of one full redraw, and of a wheel zoom
//   quit             what went wrong on the page (console errors, requests
//                    elsewhere), then exit
import { chromium } from "playwright-core";
import readline from "node:readline";

const [url, token, outDir] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const context = await browser.newContext({
  viewport: { width: 1400, height: 900 },
  ...(token ? { httpCredentials: { username: "tangle", password: token } } : {}),
});
const page = await context.newPage();
const problems = [];
page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") problems.push(`console ${m.type()}: ${m.text()}`); });
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
// Anything not from the collector itself is a problem (the page must work offline).
page.on("request", (r) => { if (!r.url().startsWith(url)) problems.push(`request elsewhere: ${r.url()}`); });

const say = (o) => console.log(JSON.stringify(o));
const updates = () => page.$eval("#status", (s) => Number(s.dataset.updates));
const map = () => page.evaluate(() => ({
  nodes: [...document.querySelectorAll("#nodes .node")].map((g) => [g.dataset.node, g.dataset.kind]),
  edges: [...document.querySelectorAll("#edges .edge")].map((p) => [p.dataset.edge, p.dataset.kind]),
  highlighted: {
    nodes: [...document.querySelectorAll("#nodes .node.highlight")].map((g) => g.dataset.node),
    edges: [...document.querySelectorAll("#edges .edge.highlight")].map((p) => p.dataset.edge),
  },
  cross: [...document.querySelectorAll("#edges .edge.cross")].map((p) => p.dataset.edge),
  selected: [...document.querySelectorAll("aside li.selected")].map((li) => li.dataset.select),
  transform: document.getElementById("viewport").getAttribute("transform"),
  symptoms: Object.fromEntries([...document.querySelectorAll("#symptoms li")].map((li) => [li.dataset.symptom, li.className])),
}));

const started = Date.now();
const response = await page.goto(url, { waitUntil: "load" });
await page.waitForFunction(() => Number(document.getElementById("status").dataset.updates) >= 1, null, { timeout: 30000 });
say({ event: "loaded", status: response ? response.status() : null, first_render_ms: Date.now() - started, map: await map() });

const commands = readline.createInterface({ input: process.stdin });
for await (const line of commands) {
  const [command, arg] = line.trim().split(/\s+/, 2);
  if (process.env.MAP_DEBUG) console.error(`map.mjs: ${line}`);
  if (command === "next") {
    const seen = await updates();
    await page.waitForFunction((n) => Number(document.getElementById("status").dataset.updates) > n, seen, { timeout: 60000 });
    say({ event: "next", map: await map() });
  } else if (command === "grown") {
    await page.waitForFunction((n) => document.querySelectorAll("#nodes .node").length > n, Number(arg), { timeout: 60000 });
    say({ event: "grown", map: await map() });
  } else if (command === "select") {
    await page.click(`#symptoms li[data-symptom="${arg}"]`);
    say({ event: "select", map: await map() });
  } else if (command === "zoom") {
    await page.mouse.move(600, 400);
    await page.mouse.wheel(0, -200);
    say({ event: "zoom", map: await map() });
  } else if (command === "shot") {
    await page.screenshot({ path: `${outDir}/${arg}.png` });
    say({ event: "shot" });
  } else if (command === "time") {
    const redraw_ms = await page.evaluate(() => { const s = performance.now(); render(); return performance.now() - s; });
    const z = Date.now();
    await page.mouse.move(700, 450);
    await page.mouse.wheel(0, -300);
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r())));
    say({ event: "time", redraw_ms, zoom_ms: Date.now() - z });
  } else if (command === "quit") {
    say({ event: "quit", problems });
    break;
  } else {
    say({ event: "error", message: `unknown command ${line}` });
  }
}
commands.close();
await browser.close();
// stdin may still be open: leave without waiting for it.
process.exit(0);
