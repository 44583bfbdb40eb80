// Drives the dashboard in headless Chromium (Debian's, through playwright-core) for tests/integration/test_dashboard.py.
// One argument, JSON: {url, user, password, shots, scenario, ...}; prints one JSON line of findings on stdout and
// exits 1 with the reason on stderr when a check fails. Scenarios: "viewer", "operator", "measure".
import { execFileSync } from "node:child_process";
import { chromium } from "playwright-core";

const args = JSON.parse(process.argv[2]);
const TIMEOUT = args.timeout_ms ?? 60000;
const found = { console_errors: [] };

function fail(message) {
  throw new Error(message);
}

async function signIn(page) {
  const started = Date.now();
  await page.goto(args.url);
  await page.getByLabel("User", { exact: true }).fill(args.user);
  await page.getByLabel("Password").fill(args.password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForFunction((n) => document.querySelectorAll("table[aria-label=Clusters] tbody tr").length >= n, args.clusters, {
    timeout: TIMEOUT,
  });
  found.fleet_shown_ms = Date.now() - started;
  found.load_ms = await page.evaluate(() => Math.round(performance.getEntriesByType("navigation")[0].domContentLoadedEventEnd));
}

async function rolloutsView(page) {
  await page.getByRole("button", { name: "Rollouts" }).click();
  await page.waitForSelector(`[data-rollout-row="${args.moving}"]`, { timeout: TIMEOUT });
}

async function openRollout(page, id) {
  await page.getByRole("button", { name: `Open rollout ${id}`, exact: true }).click();
  await page.waitForSelector(`section[aria-label="Rollout ${id}"] table[aria-label=Waves] tbody tr`, { timeout: TIMEOUT });
}

const nodesDone = (page, id) =>
  page.getAttribute(`[data-rollout-row="${id}"] [aria-label="Nodes upgraded in ${id}"]`, "value").then(Number);

async function viewer(page) {
  await page.screenshot({ path: `${args.shots}/fleet.png`, fullPage: true });
  // a cluster's nodes
  await page.locator("[data-open-cluster]").first().click();
  await page.waitForSelector("table[aria-label=Nodes] tbody tr", { timeout: TIMEOUT });
  await page.screenshot({ path: `${args.shots}/nodes.png`, fullPage: true });
  await rolloutsView(page);
  // progress moves, from events (the page does not poll)
  const first = await nodesDone(page, args.moving);
  await page.waitForFunction(
    ({ id, first }) => {
      const el = document.querySelector(`[data-rollout-row="${id}"] [aria-label="Nodes upgraded in ${id}"]`);
      return el && Number(el.getAttribute("value")) > first;
    },
    { id: args.moving, first },
    { timeout: TIMEOUT },
  );
  found.progress = [first, await nodesDone(page, args.moving)];
  // the frozen rollout's reason, prominent
  await openRollout(page, args.frozen);
  const banner = page.getByRole("alert", { name: `Rollout ${args.frozen} frozen` });
  await banner.waitFor({ timeout: TIMEOUT });
  found.freeze_text = (await banner.innerText()).trim();
  found.action_buttons = await page.locator("button.action").count();
  await page.screenshot({ path: `${args.shots}/rollout-frozen.png`, fullPage: true });
  await page.getByRole("button", { name: `Close rollout ${args.frozen}` }).click();
  await openRollout(page, args.moving);
  found.action_buttons += await page.locator("button.action").count();
  await page.screenshot({ path: `${args.shots}/rollout.png`, fullPage: true });
  await page.getByRole("button", { name: "Placements" }).click();
  await page.screenshot({ path: `${args.shots}/placements.png`, fullPage: true });
  await page.getByRole("button", { name: "Events" }).click();
  await page.waitForSelector("table[aria-label=Events] tbody tr", { timeout: TIMEOUT });
  found.events_shown = await page.locator("table[aria-label=Events] tbody tr").count();
  await page.screenshot({ path: `${args.shots}/events.png`, fullPage: true });
}

async function operator(page) {
  await rolloutsView(page);
  await openRollout(page, args.moving);
  await page.getByRole("button", { name: `Pause rollout ${args.moving}`, exact: true }).click();
  const dialog = page.getByRole("dialog");
  await dialog.waitFor({ timeout: TIMEOUT });
  found.confirmation = (await dialog.locator("p").innerText()).trim();
  await page.screenshot({ path: `${args.shots}/confirm-pause.png` });
  await dialog.getByRole("button", { name: "Confirm" }).click();
  await page.waitForSelector(`[data-rollout-row="${args.moving}"] .s-Paused`, { timeout: TIMEOUT });
  found.status_line = (await page.locator("#status").innerText()).trim();
  // the event the pause caused names bob (the bus proved who sent it)
  await page.getByRole("button", { name: "Events" }).click();
  await page.waitForSelector(`table[aria-label=Events] tbody tr:has-text("${args.moving}"):has(td:text-is("bob"))`, {
    timeout: TIMEOUT,
  });
  found.event_by_bob = true;
  await page.screenshot({ path: `${args.shots}/events-actor.png`, fullPage: true });
  await page.screenshot({ path: `${args.shots}/rollout-paused.png`, fullPage: true });
}

async function reconnect(page) {
  // nats-server restarts (the supervisor starts it again, same port); the page reconnects by itself, re-creates
  // its ordered consumer, and an event sent after that shows up (a label set on a cluster).
  execFileSync(args.restart[0], args.restart.slice(1), { stdio: "ignore" });
  await page.waitForFunction(() => window.flotillaDashboard.reconnects >= 1, null, { timeout: TIMEOUT });
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("connected as"), null, {
    timeout: TIMEOUT,
  });
  execFileSync(args.after[0], args.after.slice(1), { stdio: "ignore" });
  await page.waitForSelector(`table[aria-label=Clusters] code:text-is("${args.expect_label}")`, { timeout: TIMEOUT });
  found.reconnects = await page.evaluate(() => window.flotillaDashboard.reconnects);
}

async function measure(page) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Performance.enable");
  const metrics = Object.fromEntries((await cdp.send("Performance.getMetrics")).metrics.map((m) => [m.name, m.value]));
  found.js_heap_used_mb = Math.round(metrics.JSHeapUsedSize / 1e5) / 10;
  const state = await page.evaluate(() => window.flotillaDashboard);
  found.first_render_ms = state.firstRenderMs;
  found.last_render_ms = state.lastRenderMs;
  found.slowest_render_ms = state.slowestRenderMs;
  const t0 = Date.now();
  await page.getByLabel("Filter clusters by label selector").fill("env=none");
  await page.waitForFunction(() => document.querySelectorAll("table[aria-label=Clusters] tbody tr").length === 0);
  found.filter_ms = Date.now() - t0;
  await page.screenshot({ path: `${args.shots}/large-fleet.png` });
}

const browser = await chromium.launch({ executablePath: args.chromium ?? "/usr/bin/chromium", args: ["--no-sandbox"] });
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.on("console", (m) => m.type() === "error" && found.console_errors.length < 10 && found.console_errors.push(m.text()));
  page.on("pageerror", (e) => found.console_errors.push(String(e)));
  await signIn(page);
  await { viewer, operator, reconnect, measure }[args.scenario](page);
  found.page_errors = await page.evaluate(() => window.flotillaDashboard.errors);
  console.log(JSON.stringify(found));
} catch (err) {
  const page = browser.contexts()[0]?.pages()[0];
  if (page) {
    found.page_state = await page.evaluate(() => window.flotillaDashboard).catch(() => null);
    found.status_line = await page.locator("#status").innerText().catch(() => "");
    await page.screenshot({ path: `${args.shots}/failed-${args.scenario}.png`, fullPage: true }).catch(() => {});
  }
  console.log(JSON.stringify(found));
  console.error(`${args.scenario}: ${err.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
