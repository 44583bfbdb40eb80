// The page's picture of the fleet: pure updates from query replies and events (no I/O, no DOM).

export const MAX_EVENTS = 300;

export function emptyModel() {
  return {
    clusters: new Map(), // id -> cluster row
    rollouts: new Map(), // id -> RolloutSummary
    status: new Map(), // rollout id -> RolloutStatusReply (the open rollout's, with nodes)
    subscriptions: new Map(), // name -> SubscriptionSummary
    placements: new Map(), // name -> SubscriptionInfo (the open subscription's)
    nodes: new Map(), // cluster id -> NodeHealthInfo[] (the open cluster's)
    events: [], // newest first: {seq, subject, entity, ids, verb, body, at}
  };
}

function clusterRow(model, id) {
  let row = model.clusters.get(id);
  if (!row) {
    row = { id, name: id, state: "", labels: {}, nodeCount: 0, version: "", health: "Unknown", reason: "" };
    row.nodes = { ready: 0, not_ready: 0, unreachable: 0, lost: 0 };
    row.apiVersions = [];
    row.kubeletVersions = [];
    row.lastHeartbeat = null;
    model.clusters.set(id, row);
  }
  return row;
}

/** registration clusters.list items (ClusterInfo). */
export function setClusters(model, infos) {
  const seen = new Set();
  for (const info of infos) {
    seen.add(info.cluster_id);
    const row = clusterRow(model, info.cluster_id);
    row.name = info.identity?.name ?? info.cluster_id;
    row.state = info.state;
    row.labels = info.labels ?? {};
    row.nodeCount = info.node_count ?? 0;
    row.version = info.identity?.kubernetes_version ?? "";
  }
  for (const id of [...model.clusters.keys()]) if (!seen.has(id)) model.clusters.delete(id);
}

/** heartbeat health.clusters items (ClusterHealthInfo). */
export function setHealth(model, infos) {
  for (const info of infos) {
    if (!model.clusters.has(info.cluster_id)) continue; // not (or no longer) a member
    const row = clusterRow(model, info.cluster_id);
    row.health = info.state;
    row.reason = info.message || info.reason || "";
    row.nodes = { ...row.nodes, ...info.nodes };
    row.apiVersions = info.api_server_versions ?? [];
    row.kubeletVersions = info.kubelet_versions ?? [];
    row.lastHeartbeat = info.last_heartbeat_at ?? null;
  }
}

export function setRollouts(model, summaries) {
  model.rollouts = new Map(summaries.map((r) => [r.rollout_id, r]));
}

export function setStatus(model, status) {
  model.status.set(status.rollout.rollout_id, status);
  model.rollouts.set(status.rollout.rollout_id, status.rollout);
}

export function setSubscriptions(model, summaries) {
  model.subscriptions = new Map(summaries.map((s) => [s.name, s]));
}

/** `fleet.v1.evt.<entity>.<ids...>.<verb>` -> {entity, ids, verb}. */
export function parseSubject(subject) {
  const parts = subject.split(".");
  return { entity: parts[3] ?? "", ids: parts.slice(4, -1), verb: parts[parts.length - 1] ?? "" };
}

/** What an event asks the page to fetch again (a rollout, the clusters, the subscriptions), after applying
 * what the event itself says. Returns {rollout?, clusters?, subscriptions?, nodesOf?}. */
export function applyEvent(model, subject, body, seq, actor = "") {
  const { entity, ids, verb } = parseSubject(subject);
  const at = body?.occurred_at ?? new Date().toISOString();
  model.events.unshift({ seq, subject, entity, ids, verb, body, at, actor });
  if (model.events.length > MAX_EVENTS) model.events.length = MAX_EVENTS;
  switch (entity) {
    case "cluster-health": {
      const row = model.clusters.get(ids[0]);
      if (row && verb === "changed") {
        row.health = body.to;
        row.reason = body.message || body.reason || "";
        row.nodes = { ...row.nodes, ...body.nodes };
        row.lastHeartbeat = body.last_heartbeat_at ?? row.lastHeartbeat;
      }
      return {};
    }
    case "cluster":
      return { clusters: true };
    case "node":
    case "node-health":
      return { nodesOf: ids[0] };
    case "rollout":
      if (body?.rollout?.rollout_id) model.rollouts.set(body.rollout.rollout_id, body.rollout);
      return { rollout: ids[0] };
    case "rollout-wave":
    case "rollout-cluster":
    case "rollout-node":
      return { rollout: ids[0] };
    case "subscription":
    case "placement":
    case "applied":
      return { subscriptions: true };
    default:
      return {};
  }
}

/** The view that shows what an event changes by itself (without asking again): health on the fleet, a rollout's
 * summary on the rollouts. */
export function viewOf(subject) {
  const { entity } = parseSubject(subject);
  return entity === "cluster-health" ? "fleet" : entity === "rollout" ? "rollouts" : "";
}

/** A label selector as the CLI takes it: `k=v,k!=v,k,!k` (the page filters what it already holds). */
export function matchesSelector(labels, selector) {
  const terms = selector.split(",").map((t) => t.trim()).filter(Boolean);
  return terms.every((term) => {
    if (term.startsWith("!")) return !(term.slice(1) in labels);
    const ne = term.indexOf("!=");
    if (ne > 0) return labels[term.slice(0, ne).trim()] !== term.slice(ne + 2).trim();
    const eq = term.indexOf("=");
    if (eq > 0) return labels[term.slice(0, eq).trim()] === term.slice(eq + 1).replace(/^=/, "").trim();
    return term in labels;
  });
}

/** Clusters by health, for the overview's counters. */
export function healthCounts(model) {
  const counts = {};
  for (const row of model.clusters.values()) counts[row.health] = (counts[row.health] ?? 0) + 1;
  return counts;
}

/** The operator's verbs a rollout in `state` may take (what the orchestrator accepts; it has the last word). */
export function actionsFor(rollout) {
  const live = ["Pending", "Running", "AwaitingApproval", "Paused", "Frozen"].includes(rollout.state);
  if (!live) return [];
  const verbs = [];
  if (["Running", "AwaitingApproval", "Pending"].includes(rollout.state)) verbs.push("pause");
  if (["Paused", "Frozen"].includes(rollout.state)) verbs.push("resume");
  if ((rollout.clusters?.failed ?? 0) + (rollout.nodes?.failed ?? 0) > 0) verbs.push("retry");
  verbs.push("abort");
  return verbs;
}
