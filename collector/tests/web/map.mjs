// Drives the coupling map in Debian's Chromium for collector/tests/web.rs.
// Usage: node map.mjs URL TOKEN OUT_DIR MODE
//   MODE "check": load, read the map, select a finding, then (after the
//     test sends a new chain: it prints "WAITING" and reads a line) read
//     the map again; prints one JSON line of what it saw.
//   MODE "time": load a large model, time the first render and an update.
//   MODE "file": open a report (`report --format html`) and read its map.
import { chromium } from "playwright-core";
import readline from "node:readline";

const [url, token, outDir, mode] = process.argv.slice(2);
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

const updates = () => page.$eval("#status", (s) => Number(s.dataset.updates));
const map = () => page.evaluate(() => ({
  nodes: [...document.querySelectorAll("#nodes .node")].map((g) => [g.dataset.node, g.dataset.kind]),
  edges: [...document.querySelectorAll("#edges .edge")].map((p) => [p.dataset.edge, p.dataset.kind]),
  highlighted: {
    nodes: [...document.querySelectorAll("#nodes .node.highlight")].map((g) => g.dataset.node),
    edges: [...document.querySelectorAll("#edges .edge.highlight")].map((p) => p.dataset.edge),
  },
  selected: [...document.querySelectorAll("aside li.selected")].map((li) => li.dataset.select),
  transform: document.getElementById("viewport").getAttribute("transform"),
  symptoms: Object.fromEntries([...document.querySelectorAll("#symptoms li")].map((li) => [li.dataset.symptom, li.className])),
}));

const started = Date.now();
const response = await page.goto(url, { waitUntil: "load" });
await page.waitForFunction(() => Number(document.getElementById("status").dataset.updates) >= 1, null, { timeout: 30000 });
const firstRender = Date.now() - started;
const out = { status: response ? response.status() : null, first_render_ms: firstRender };

if (mode === "file") {
  out.map = await map();
  await page.screenshot({ path: `${outDir}/report.png` });
} else if (mode === "time") {
  // An update with the same model: the time of one full redraw.
  const t = await page.evaluate(() => { const s = performance.now(); render(); return performance.now() - s; });
  out.update_ms = t;
  out.counts = await page.evaluate(() => [document.querySelectorAll("#nodes .node").length, document.querySelectorAll("#edges .edge").length]);
  // Still answers input: a wheel zoom lands within a frame or two.
  const z = Date.now();
  await page.mouse.move(700, 450);
  await page.mouse.wheel(0, -300);
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r())));
  out.zoom_ms = Date.now() - z;
  await page.screenshot({ path: `${outDir}/map-large.png` });
} else {
  out.before = await map();
  // Zoom in a little, then select the new-chain finding.
  await page.mouse.move(600, 400);
  await page.mouse.wheel(0, -200);
  await page.click('#symptoms li[data-symptom="new_sync_chain"]');
  out.selected = await map();
  await page.screenshot({ path: `${outDir}/map.png` });
  const seen = await updates();
  console.log("WAITING");
  await new Promise((r) => readline.createInterface({ input: process.stdin }).once("line", r));
  // The next poll brings the new chain.
  await page.waitForFunction((n) => Number(document.getElementById("status").dataset.updates) > n, seen, { timeout: 30000 });
  await page.waitForFunction((n) => document.querySelectorAll("#nodes .node").length > n, out.before.nodes.length, { timeout: 30000 });
  out.after = await map();
  await page.screenshot({ path: `${outDir}/map-updated.png` });
}
out.problems = problems;
console.log(JSON.stringify(out));
await browser.close();
