// The page's pure rules (node's test runner; run by tests/integration/test_dashboard.py).
import assert from "node:assert/strict";
import { test } from "node:test";
import { commandSubject } from "../src/bus.js";
import { actionsFor, applyEvent, emptyModel, matchesSelector, parseSubject, setClusters } from "../src/model.js";
import { esc } from "../src/views.js";

test("a named user sends on their own subject, the built-in admin on the plain one", () => {
  assert.equal(commandSubject("upgrade-orchestrator", "upgrade.pause", "bob"), "fleet.v1.cmd.upgrade-orchestrator.upgrade.pause.by.bob");
  assert.equal(commandSubject("registration", "clusters.list", "admin"), "fleet.v1.cmd.registration.clusters.list");
});

test("label selectors as the CLI takes them", () => {
  const labels = { env: "prod", tier: "web" };
  assert.ok(matchesSelector(labels, "env=prod"));
  assert.ok(matchesSelector(labels, "env==prod,tier!=db"));
  assert.ok(matchesSelector(labels, "env,!gpu"));
  assert.ok(!matchesSelector(labels, "env=dev"));
  assert.ok(!matchesSelector(labels, "tier!=web"));
  assert.ok(!matchesSelector(labels, "!env"));
});

test("the verbs offered follow the rollout's state; retry only after a failure", () => {
  assert.deepEqual(actionsFor({ state: "Running", clusters: {}, nodes: {} }), ["pause", "abort"]);
  assert.deepEqual(actionsFor({ state: "Frozen", clusters: { failed: 0 }, nodes: { failed: 1 } }), ["resume", "retry", "abort"]);
  assert.deepEqual(actionsFor({ state: "Succeeded" }), []);
});

test("an event updates what it says and names what to ask again", () => {
  const model = emptyModel();
  setClusters(model, [{ cluster_id: "c1", identity: { name: "c1", kubernetes_version: "v1.29.6" }, state: "Approved" }]);
  const body = { to: "Degraded", reason: "NodesNotReady", nodes: { ready: 1, not_ready: 1 } };
  assert.deepEqual(applyEvent(model, "fleet.v1.evt.cluster-health.c1.changed", body, 7), {});
  assert.equal(model.clusters.get("c1").health, "Degraded");
  assert.deepEqual(applyEvent(model, "fleet.v1.evt.rollout-node.r1.c1.n1.state-changed", {}, 8), { rollout: "r1" });
  assert.deepEqual(parseSubject("fleet.v1.evt.rollout-node.r1.c1.n1.state-changed").ids, ["r1", "c1", "n1"]);
  assert.equal(model.events.length, 2);
});

test("values from the bus are escaped", () => {
  assert.equal(esc(`<img src=x onerror="a">`), "&#60;img src=x onerror=&#34;a&#34;&#62;");
});
