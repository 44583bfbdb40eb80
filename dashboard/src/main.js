// The dashboard's controller: login, the first load, live events, the views and the operator's actions.
import { Bus } from "./bus.js";
import * as M from "./model.js";
import * as V from "./views.js";

const $ = (sel) => document.querySelector(sel);
const model = M.emptyModel();
const ui = { view: "fleet", selector: "", cluster: "", rollout: "", subscription: "", role: "viewer", user: "" };
const config = { websocket_url: "", roles: {} };
const pending = new Map(); // what an event asked to fetch again -> timer
const ROLLOUT_PAGE = 200;
let bus = null;
let stopFollow = null;
let renderQueued = false;
let renderTimer = null;
let lastDrawEnd = 0;
window.flotillaDashboard = { firstRenderMs: null, rendered: 0, reconnects: 0, errors: [] };

function status(text, kind = "") {
  const el = $("#status");
  el.textContent = text;
  el.className = kind;
}

function report(err, what) {
  const message = `${what}: ${err?.message ?? err}`;
  window.flotillaDashboard.errors.push(message);
  status(message, "bad");
}

function draw() {
  renderQueued = false;
  renderTimer = null;
  const now = Date.now();
  const started = performance.now();
  const views = { fleet: V.fleetView, rollouts: V.rolloutsView, placements: V.placementsView, events: V.eventsView };
  $("#content").innerHTML = views[ui.view](model, ui, now);
  for (const tab of document.querySelectorAll("[data-view]")) {
    tab.setAttribute("aria-pressed", String(tab.dataset.view === ui.view));
  }
  $("#fleet-tools").hidden = ui.view !== "fleet";
  const d = window.flotillaDashboard;
  d.rendered += 1;
  d.lastRenderMs = Math.round(performance.now() - started); // building the view's HTML and the DOM, not layout
  d.slowestRenderMs = Math.max(d.slowestRenderMs ?? 0, d.lastRenderMs);
  lastDrawEnd = performance.now();
  if (d.firstRenderMs === null && model.clusters.size) d.firstRenderMs = Math.round(lastDrawEnd);
}

/** Draw the view again. What a person did draws at the next frame; what the bus said waits so that drawing
 * takes at most a fifth of the time (a big fleet's table during an event storm leaves the page responsive). */
function render(byPerson = false) {
  if (byPerson) {
    if (renderTimer) clearTimeout(renderTimer);
    renderTimer = null;
    renderQueued = true;
    requestAnimationFrame(() => renderQueued && draw());
    return;
  }
  if (renderQueued) return;
  renderQueued = true;
  const gap = Math.max(100, 4 * (window.flotillaDashboard.lastRenderMs ?? 0));
  const wait = Math.max(0, lastDrawEnd + gap - performance.now());
  renderTimer = setTimeout(() => requestAnimationFrame(() => renderQueued && draw()), wait);
}

/** At most one fetch per key every `ms`, however many events ask for it. */
function soon(key, ms, fetcher) {
  if (pending.has(key)) return;
  pending.set(
    key,
    setTimeout(async () => {
      pending.delete(key);
      try {
        await fetcher();
        render();
      } catch (err) {
        report(err, `refreshing ${key}`);
      }
    }, ms),
  );
}

async function loadClusters() {
  const [clusters, health] = await Promise.all([
    bus.all("registration", "clusters.list", "registration.ListClustersRequest", {}, "clusters"),
    bus.all("heartbeat", "health.clusters", "heartbeat.ClustersHealthRequest", {}, "clusters"),
  ]);
  M.setClusters(model, clusters);
  M.setHealth(model, health);
}

async function loadNodes(clusterId) {
  const nodes = await bus.all("heartbeat", "health.nodes", "heartbeat.NodesHealthRequest", { cluster_id: clusterId }, "nodes");
  model.nodes.set(clusterId, nodes);
}

async function loadRollout(id) {
  const open = ui.rollout === id;
  // The open rollout's clusters with their nodes, one page (a reply stays well under the bus's 1 MiB payload).
  const body = { rollout_id: id, include_nodes: open, limit: open ? ROLLOUT_PAGE : 1 };
  const status = await bus.request("upgrade-orchestrator", "upgrade.status", "upgrade.RolloutStatusRequest", body);
  if (open) M.setStatus(model, status);
  else model.rollouts.set(id, status.rollout);
}

async function loadRollouts() {
  M.setRollouts(model, await bus.all("upgrade-orchestrator", "upgrade.list", "upgrade.ListRolloutsRequest", {}, "rollouts"));
}

async function loadSubscriptions() {
  M.setSubscriptions(
    model,
    await bus.all("scheduler", "subscriptions.list", "scheduler.ListSubscriptionsRequest", {}, "subscriptions"),
  );
  if (ui.subscription) await loadSubscription(ui.subscription);
}

async function loadSubscription(name) {
  const reply = await bus.request("scheduler", "subscriptions.get", "scheduler.GetSubscriptionRequest", { name });
  model.placements.set(name, reply.subscription);
}

/** Everything the page shows, asked once (at login and after a reconnect); events keep it current. */
async function loadAll() {
  status("loading the fleet…");
  await Promise.all([loadClusters(), loadRollouts(), loadSubscriptions()]);
  if (ui.rollout) await loadRollout(ui.rollout);
  if (ui.cluster) await loadNodes(ui.cluster);
  status(`connected as ${ui.user} (${ui.role})`, "ok");
  render();
}

function onEvent(subject, body, seq, actor) {
  const wants = M.applyEvent(model, subject, body, seq, actor);
  if (wants.rollout) soon(`rollout ${wants.rollout}`, 500, () => loadRollout(wants.rollout));
  if (wants.clusters) soon("clusters", 1000, loadClusters);
  if (wants.subscriptions) soon("subscriptions", 1000, loadSubscriptions);
  if (wants.nodesOf && wants.nodesOf === ui.cluster) soon(`nodes ${ui.cluster}`, 1000, () => loadNodes(ui.cluster));
  if (ui.view === "events" || ui.view === M.viewOf(subject)) render();
}

/** After a reconnect the services may not answer yet (they reconnect too): ask again with back-off until they
 * do, or until a newer reconnect takes over. */
async function reloadAfterReconnect(which) {
  for (let wait = 1000; which === window.flotillaDashboard.reconnects; wait = Math.min(wait * 2, 10000)) {
    try {
      await loadAll();
      return;
    } catch (err) {
      status(`reconnected; the fleet does not answer yet (${err.message}); asking again in ${wait / 1000}s`, "bad");
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }
}

function onBusStatus(type) {
  if (type === "disconnect" || type === "reconnecting") status("connection lost: reconnecting…", "bad");
  if (type === "reconnect") {
    window.flotillaDashboard.reconnects += 1;
    reloadAfterReconnect(window.flotillaDashboard.reconnects);
  }
}

async function login(event) {
  event.preventDefault();
  const user = $("#user").value.trim();
  const password = $("#password").value;
  const url = $("#server").value.trim();
  status(`connecting to ${url} as ${user}…`);
  try {
    bus = await Bus.connect(url, user, password, onBusStatus);
  } catch (err) {
    status(`could not connect as ${user}: ${err.message} (check the user and password)`, "bad");
    return;
  }
  ui.user = user;
  ui.role = user === "admin" ? "admin" : (config.roles[user] ?? "viewer");
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#whoami").textContent = `${user} (${ui.role})`;
  try {
    stopFollow = await bus.follow(onEvent);
    await loadAll();
  } catch (err) {
    report(err, "loading the fleet");
  }
}

async function logout() {
  stopFollow?.();
  await bus?.close();
  location.hash = "";
  location.reload();
}

let confirmAction = null;

function askToConfirm(button) {
  const { verb, rollout, wave, cluster } = button.dataset;
  const summary = model.rollouts.get(rollout);
  $("#confirm-text").textContent = V.confirmText(verb, summary, { rollout, wave, cluster });
  confirmAction = { verb, rollout, wave, cluster };
  $("#confirm").showModal();
}

const ACTION_SCHEMAS = {
  pause: "upgrade.PauseRolloutRequest",
  resume: "upgrade.ResumeRolloutRequest",
  approve: "upgrade.ApproveWaveRequest",
  retry: "upgrade.RetryRequest",
  skip: "upgrade.SkipClusterRequest",
  abort: "upgrade.AbortRolloutRequest",
};

async function runAction() {
  const { verb, rollout, wave, cluster } = confirmAction;
  const body = { rollout_id: rollout };
  if (verb === "approve") body.wave = Number(wave);
  if (cluster) body.cluster_id = cluster;
  if (verb === "pause" || verb === "abort" || verb === "skip") body.reason = `from the dashboard by ${ui.user}`;
  try {
    const reply = await bus.request("upgrade-orchestrator", `upgrade.${verb}`, ACTION_SCHEMAS[verb], body);
    model.rollouts.set(reply.rollout.rollout_id, reply.rollout);
    status(reply.message || `${verb}: rollout ${rollout} is ${reply.rollout.state}`, "ok");
    soon(`rollout ${rollout}`, 0, () => loadRollout(rollout));
  } catch (err) {
    status(`${verb} of rollout ${rollout} refused: ${err.message}`, "bad");
  }
  render();
}

function onClick(event) {
  const el = event.target.closest("button");
  if (!el) return;
  const d = el.dataset;
  if (d.view) ui.view = d.view;
  else if (d.openCluster) {
    ui.cluster = d.openCluster;
    soon(`nodes ${ui.cluster}`, 0, () => loadNodes(d.openCluster));
  } else if (d.closeCluster !== undefined) ui.cluster = "";
  else if (d.openRollout) {
    ui.rollout = d.openRollout;
    soon(`rollout ${ui.rollout}`, 0, () => loadRollout(d.openRollout));
  } else if (d.closeRollout !== undefined) ui.rollout = "";
  else if (d.openSubscription) {
    ui.subscription = d.openSubscription;
    soon(`subscription ${ui.subscription}`, 0, () => loadSubscription(d.openSubscription));
  } else if (d.closeSubscription !== undefined) ui.subscription = "";
  else if (d.verb) askToConfirm(el);
  else return;
  render(true);
}

async function start() {
  try {
    Object.assign(config, await (await fetch("config.json")).json());
  } catch {
    // served without a config.json: the person types the WebSocket URL
  }
  $("#server").value = config.websocket_url || `ws://${location.hostname}:8080`;
  // `flotilla dashboard --user NAME` prints a link whose #fragment holds user and password: the browser never
  // sends a fragment to the HTTP server. The page fills the form with it and removes it from the address bar.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("user")) {
    $("#user").value = fragment.get("user");
    $("#password").value = fragment.get("password") ?? "";
    history.replaceState(null, "", location.pathname);
  }
  $("#login").addEventListener("submit", login);
  $("#logout").addEventListener("click", logout);
  $("#selector").addEventListener("input", (e) => {
    ui.selector = e.target.value;
    render(true);
  });
  $("#confirm").addEventListener("close", () => {
    if ($("#confirm").returnValue === "yes") runAction();
  });
  document.addEventListener("click", onClick);
  // Time passing shows without events: a soak's time left (every second, while one is shown), heartbeat ages
  // (every 5 s: the fleet table is the biggest view).
  let ticks = 0;
  setInterval(() => {
    ticks += 1;
    const soaking = ui.view === "rollouts" && ui.rollout && model.status.get(ui.rollout)?.waves?.some((w) => w.state === "Soaking");
    if (bus && (soaking || (ui.view === "fleet" && ticks % 5 === 0))) render();
  }, 1000);
}

start();
