// HTML for each view, from the model (strings; every value from the bus is escaped).
import { actionsFor, healthCounts, matchesSelector } from "./model.js";

export const MAX_ROWS = 1000;

export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function ago(iso, now) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  return s < 90 ? `${s}s ago` : s < 5400 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
}

function left(iso, now) {
  const s = Math.max(0, Math.round((Date.parse(iso) - now) / 1000));
  return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s left`;
}

function badge(state) {
  return `<span class="badge s-${esc(state)}">${esc(state)}</span>`;
}

function progress(counts, label) {
  const total = counts?.total ?? 0;
  const done = (counts?.succeeded ?? 0) + (counts?.skipped ?? 0);
  const failed = counts?.failed ?? 0;
  const pct = total ? Math.round((100 * done) / total) : 0;
  return `<progress aria-label="${esc(label)}" max="${total}" value="${done}">${pct}%</progress>
    <span class="count">${done}/${total}${failed ? ` <b class="bad">${failed} failed</b>` : ""}</span>`;
}

function labels(map) {
  return Object.entries(map ?? {})
    .map(([k, v]) => `<code>${esc(k)}=${esc(v)}</code>`)
    .join(" ");
}

export function fleetView(model, ui, now) {
  const counts = healthCounts(model);
  const rows = [...model.clusters.values()]
    .filter((c) => !ui.selector || matchesSelector(c.labels, ui.selector))
    .sort((a, b) => a.id.localeCompare(b.id));
  const shown = rows.slice(0, MAX_ROWS);
  const summary = Object.entries(counts)
    .map(([state, n]) => `<li>${badge(state)} <b>${n}</b></li>`)
    .join("");
  const body = shown
    .map((c) => {
      const n = c.nodes;
      const total = n.ready + n.not_ready + n.unreachable + n.lost || c.nodeCount;
      return `<tr data-cluster="${esc(c.id)}">
        <td><button class="link" data-open-cluster="${esc(c.id)}" aria-label="Nodes of cluster ${esc(c.id)}">${esc(c.id)}</button></td>
        <td>${badge(c.health)}${c.reason ? ` <small>${esc(c.reason)}</small>` : ""}</td>
        <td>${esc(c.apiVersions.join(", ") || c.version)}</td>
        <td>${esc(c.kubeletVersions.join(", "))}</td>
        <td>${n.ready}/${total}</td>
        <td>${labels(c.labels)}</td>
        <td>${ago(c.lastHeartbeat, now)}</td></tr>`;
    })
    .join("");
  const more = rows.length > shown.length ? `<p>Showing ${shown.length} of ${rows.length}: narrow the selector.</p>` : "";
  let html = `<ul class="counters" aria-label="Clusters by health">${summary}</ul>
    <p class="muted">${rows.length} of ${model.clusters.size} clusters</p>
    <table aria-label="Clusters"><thead><tr><th>Cluster</th><th>Health</th><th>API servers</th><th>Kubelets</th>
    <th>Nodes ready</th><th>Labels</th><th>Last heartbeat</th></tr></thead><tbody>${body}</tbody></table>${more}`;
  if (ui.cluster) html = nodesView(model, ui.cluster, now) + html;
  return html;
}

function nodesView(model, clusterId, now) {
  const nodes = model.nodes.get(clusterId);
  const rows = (nodes ?? [])
    .map(
      (n) => `<tr><td>${esc(n.node_name)}</td><td>${esc(n.role)}</td><td>${badge(n.state)}${
        n.reason ? ` <small>${esc(n.reason)}</small>` : ""
      }</td><td>${esc(n.kubelet_version)}</td><td>${esc(n.api_server?.version ?? "")}</td>
      <td>${ago(n.last_heartbeat_at, now)}</td></tr>`,
    )
    .join("");
  return `<section class="panel" aria-label="Nodes of ${esc(clusterId)}"><h2>Nodes of ${esc(clusterId)}
    <button data-close-cluster aria-label="Close the nodes of ${esc(clusterId)}">Close</button></h2>
    ${nodes ? "" : "<p>Loading…</p>"}
    <table aria-label="Nodes"><thead><tr><th>Node</th><th>Role</th><th>Health</th><th>Kubelet</th>
    <th>API server</th><th>Last heartbeat</th></tr></thead><tbody>${rows}</tbody></table></section>`;
}

function freezeBanner(freeze, where) {
  if (!freeze) return "";
  const at = freeze.cluster_id ? ` in cluster ${esc(freeze.cluster_id)}` : "";
  const node = freeze.node_id ? `, node ${esc(freeze.node_id)}` : "";
  return `<div class="frozen" role="alert" aria-label="${esc(where)} frozen"><b>Frozen: ${esc(freeze.reason)}</b>${at}${node}
    <p>${esc(freeze.message)}</p><small>since ${esc(freeze.since)}</small></div>`;
}

function actionButton(verb, rolloutId, extra = {}, label = verb) {
  const attrs = Object.entries(extra)
    .map(([k, v]) => ` data-${k}="${esc(v)}"`)
    .join("");
  const name = `${label[0].toUpperCase()}${label.slice(1)}`;
  const what = extra.cluster ? ` cluster ${extra.cluster} in` : extra.wave !== undefined ? ` wave ${extra.wave} of` : "";
  return `<button class="action" data-verb="${verb}" data-rollout="${esc(rolloutId)}"${attrs}
    aria-label="${esc(`${name}${what} rollout ${rolloutId}`)}">${esc(name)}</button>`;
}

export function rolloutsView(model, ui, now) {
  const list = [...model.rollouts.values()].sort((a, b) => b.created_at.localeCompare(a.created_at));
  const rows = list
    .map(
      (r) => `<tr data-rollout-row="${esc(r.rollout_id)}">
      <td><button class="link" data-open-rollout="${esc(r.rollout_id)}" aria-label="Open rollout ${esc(r.rollout_id)}">${esc(
        r.name || r.rollout_id,
      )}</button></td><td>${esc(r.target_version)}</td><td>${badge(r.state)}${
        r.freeze ? ` <b class="bad">${esc(r.freeze.reason)}</b>` : ""
      }</td><td>${r.current_wave ?? "–"}/${r.waves_total}</td>
      <td>${progress(r.clusters, `Clusters upgraded in ${r.rollout_id}`)}</td>
      <td>${progress(r.nodes, `Nodes upgraded in ${r.rollout_id}`)}</td></tr>`,
    )
    .join("");
  let html = `<table aria-label="Rollouts"><thead><tr><th>Rollout</th><th>Target</th><th>State</th><th>Wave</th>
    <th>Clusters</th><th>Nodes</th></tr></thead><tbody>${rows}</tbody></table>`;
  if (!list.length) html += "<p>No rollouts yet (`flotilla upgrade start` begins one).</p>";
  const status = ui.rollout && model.status.get(ui.rollout);
  if (ui.rollout) html = rolloutDetail(model, ui, status, now) + html;
  return html;
}

function rolloutDetail(model, ui, status, now) {
  if (!status) return `<section class="panel"><p>Loading rollout ${esc(ui.rollout)}…</p></section>`;
  const r = model.rollouts.get(ui.rollout) ?? status.rollout;
  const id = r.rollout_id;
  const canAct = ui.role === "operator" || ui.role === "admin";
  const actions = canAct
    ? `<div class="actions" role="group" aria-label="Actions on rollout ${esc(id)}">${actionsFor(r)
        .map((v) => actionButton(v, id))
        .join("")}</div>`
    : "";
  const failures = (status.failures ?? [])
    .map(
      (f) => `<li><b>${esc(f.cluster_id)}${f.node_id ? `/${esc(f.node_id)}` : ""}</b> ${esc(f.step ?? "")}: ${esc(
        f.reason,
      )} ${esc(f.message)}</li>`,
    )
    .join("");
  const waves = (status.waves ?? [])
    .map((w) => {
      const soak = w.state === "Soaking" && w.soak_until ? ` <span class="soak">soak ${left(w.soak_until, now)}</span>` : "";
      const approve =
        canAct && w.state === "AwaitingApproval" ? actionButton("approve", id, { wave: w.index }, "approve") : "";
      return `<tr><td>${w.index}${w.name ? ` ${esc(w.name)}` : ""}</td><td>${badge(w.state)}${soak}</td>
        <td>${progress(w.clusters, `Clusters of wave ${w.index}`)}</td><td>${approve}</td></tr>`;
    })
    .join("");
  const clusters = (status.clusters ?? [])
    .map((c) => {
      const steps = (c.nodes ?? [])
        .map(
          (n) => `<span class="step s-${esc(n.state)}" title="${esc(n.failure || n.step_in_flight || "")}">${esc(
            n.node_name,
          )}: ${esc(n.state)}${n.step_in_flight ? ` (${esc(n.step_in_flight)})` : ""}</span>`,
        )
        .join(" ");
      const finished = ["Succeeded", "Skipped", "RolledBack", "Aborted"].includes(c.state);
      const skip = canAct && !finished && actionsFor(r).length ? actionButton("skip", id, { cluster: c.cluster_id }) : "";
      const note = c.failure || c.waiting || (c.window_opens_at ? `window opens ${c.window_opens_at}` : "");
      return `<tr data-rollout-cluster="${esc(c.cluster_id)}"><td>${esc(c.cluster_id)}</td><td>${c.wave}</td>
        <td>${badge(c.state)}${c.freeze ? ` <b class="bad">${esc(c.freeze.reason)}</b>` : ""}</td>
        <td>${c.nodes_done}/${c.nodes_total}${c.nodes_failed ? ` <b class="bad">${c.nodes_failed} failed</b>` : ""}</td>
        <td class="steps">${steps}${note ? `<div><small>${esc(note)}</small></div>` : ""}</td><td>${skip}</td></tr>`;
    })
    .join("");
  return `<section class="panel" aria-label="Rollout ${esc(id)}">
    <h2>Rollout ${esc(r.name || id)} → ${esc(r.target_version)} ${badge(r.state)}
      <button data-close-rollout aria-label="Close rollout ${esc(id)}">Close</button></h2>
    ${freezeBanner(r.freeze, `Rollout ${id}`)}
    ${failures ? `<div class="failures" role="region" aria-label="Failures"><h3>Failures</h3><ul>${failures}</ul></div>` : ""}
    ${actions}
    <p>Clusters ${progress(r.clusters, `Clusters upgraded in ${id}`)} Nodes ${progress(r.nodes, `Nodes upgraded in ${id}`)}</p>
    <h3>Waves</h3><table aria-label="Waves"><thead><tr><th>Wave</th><th>State</th><th>Clusters</th><th></th></tr></thead>
    <tbody>${waves}</tbody></table>
    <h3>Clusters</h3>${status.next_cursor ? `<p class="muted">The first ${status.clusters.length} of ${r.clusters.total} clusters (\`flotilla upgrade status ${esc(id)} --nodes\` lists them all).</p>` : ""}
    <table aria-label="Clusters of the rollout"><thead><tr><th>Cluster</th><th>Wave</th><th>State</th>
    <th>Nodes done</th><th>Node steps</th><th></th></tr></thead><tbody>${clusters}</tbody></table></section>`;
}

export function placementsView(model, ui) {
  const rows = [...model.subscriptions.values()]
    .map(
      (s) => `<tr><td><button class="link" data-open-subscription="${esc(s.name)}" aria-label="Placements of ${esc(
        s.name,
      )}">${esc(s.name)}</button></td><td>${esc(s.strategy)}</td><td>${s.clusters}</td><td>${s.applied}</td>
      <td>${s.failed ? `<b class="bad">${s.failed}</b>` : 0}</td></tr>`,
    )
    .join("");
  let html = `<table aria-label="Subscriptions"><thead><tr><th>Subscription</th><th>Strategy</th><th>Placed on</th>
    <th>Applied</th><th>Failed</th></tr></thead><tbody>${rows}</tbody></table>`;
  if (!model.subscriptions.size) html += "<p>No subscriptions (`flotilla subscriptions apply` adds one).</p>";
  const info = ui.subscription && model.placements.get(ui.subscription);
  if (info) {
    const applied = new Map((info.applied ?? []).map((a) => [a.cluster_id, a]));
    const placed = (info.placements ?? [])
      .map((p) => {
        const a = applied.get(p.cluster_id);
        return `<tr><td>${esc(p.cluster_id)}</td><td>${p.replicas ?? "–"}</td><td>${badge(a?.state ?? "Pending")}</td>
          <td>${esc(a?.message ?? "")}</td></tr>`;
      })
      .join("");
    html =
      `<section class="panel" aria-label="Placements of ${esc(info.spec.name)}"><h2>${esc(info.spec.name)} (generation ${
        info.generation
      }) <button data-close-subscription aria-label="Close placements">Close</button></h2>
      ${info.message ? `<p>${esc(info.message)}</p>` : ""}
      <table aria-label="Placements"><thead><tr><th>Cluster</th><th>Replicas</th><th>Applied</th><th>Message</th></tr></thead>
      <tbody>${placed}</tbody></table></section>` + html;
  }
  return html;
}

function eventSummary(e) {
  const b = e.body ?? {};
  const parts = [];
  if (b.from !== undefined || b.to !== undefined) parts.push(`${b.from ?? "∅"} → ${b.to ?? ""}`);
  for (const key of ["state", "reason", "message"]) if (typeof b[key] === "string" && b[key]) parts.push(b[key]);
  if (b.rollout?.state) parts.push(b.rollout.state);
  if (b.freeze?.reason) parts.push(`frozen: ${b.freeze.reason}`);
  return parts.join(" · ");
}

export function eventsView(model) {
  const rows = model.events
    .map(
      (e) => `<tr><td>${esc(e.at.replace("T", " ").replace(/\.\d+Z$/, "Z"))}</td><td>${esc(e.entity)}</td>
      <td>${esc(e.ids.join(" / "))}</td><td>${esc(e.verb)}</td><td>${esc(e.actor)}</td><td>${esc(eventSummary(e))}</td></tr>`,
    )
    .join("");
  return `<p class="muted">The newest ${model.events.length} events since the page connected (at most 300).</p>
    <table aria-label="Events"><thead><tr><th>When</th><th>Entity</th><th>Ids</th><th>Event</th><th>By</th><th>What</th></tr></thead>
    <tbody>${rows}</tbody></table>`;
}

/** What the confirmation says will happen, per action (the orchestrator's own reply follows it). */
export function confirmText(verb, rollout, extra) {
  const id = rollout?.rollout_id ?? extra.rollout;
  switch (verb) {
    case "pause":
      return `Pause rollout ${id}: no new cluster or node starts its upgrade; steps already running finish. Resume continues it.`;
    case "resume":
      return rollout?.freeze
        ? `Resume rollout ${id}: lift the freeze (${rollout.freeze.reason}) and continue where it stopped.`
        : `Resume rollout ${id}: continue where it stopped.`;
    case "approve":
      return `Approve wave ${extra.wave} of rollout ${id}: its clusters start upgrading.`;
    case "retry":
      return `Retry the failed clusters of rollout ${id} against its target ${rollout?.target_version ?? ""}.`;
    case "skip":
      return `Skip cluster ${extra.cluster} in rollout ${id}: it stays at its current version and the rollout goes on without it.`;
    case "abort":
      return `Abort rollout ${id}: nothing new starts and it cannot be resumed; nodes already upgraded stay upgraded.`;
    default:
      return `${verb} rollout ${id}?`;
  }
}
