// The changes an admin makes from an adapter's page, each through the admin API route the
// CLI uses, each confirmed with a reason. Promote sends the live version the page showed,
// so that a page gone stale gets the registry's conflict instead of overwriting a change.

import { adapterPath, api } from "./api.js";
import { confirmChange } from "./dialog.js";
import { el } from "./dom.js";
import { showNotice } from "./notice.js";

// The notice comes after the page is read again: once it says "done", the page shows it.
async function perform(ask, change, done, refresh) {
  const answer = await confirmChange(ask);
  if (answer === null) return;
  try {
    await change(answer);
    await refresh();
    showNotice(done, "ok");
  } catch (failure) {
    showNotice(failure.message, "error");
  }
}

export function promote(adapter, version, refresh) {
  const base = adapterPath(adapter.id);
  return perform(
    { title: `Promote v${version} of ${adapter.id}`, confirmLabel: "Promote",
      detail: `Every new request to ${adapter.id} goes to v${version}` +
        ` (now: ${adapter.live_version ? `v${adapter.live_version}` : "none"}).` },
    ({ reason }) => api("POST", `${base}/promote`,
      { version, expected_live: adapter.live_version || 0, reason }),
    `v${version} of ${adapter.id} is live.`, refresh);
}

export function rollback(adapter, refresh) {
  return perform(
    { title: `Roll back ${adapter.id}`, confirmLabel: "Roll back",
      detail: `v${adapter.live_version} stops serving; the version live before it serves again.` },
    ({ reason }) => api("POST", `${adapterPath(adapter.id)}/rollback`, { reason }),
    `${adapter.id} was rolled back.`, refresh);
}

export function setCanary(adapter, version, refresh) {
  const percent = el("input", { type: "number", name: "percent", min: 1, max: 99, value: 10 });
  return perform(
    { title: `Canary v${version} of ${adapter.id}`, confirmLabel: "Set canary",
      detail: "This share of the adapter's unpinned requests goes to the canary.",
      fields: [{ name: "percent", label: "Percent of requests", input: percent }] },
    ({ reason, values }) => api("PUT", `${adapterPath(adapter.id)}/canary`,
      { version, percent: Number(values.percent), reason }),
    `v${version} is the canary of ${adapter.id}.`, refresh);
}

export function clearCanary(adapter, refresh) {
  return perform(
    { title: `Clear the canary of ${adapter.id}`, confirmLabel: "Clear canary",
      detail: `v${adapter.canary_version} stops receiving traffic.` },
    ({ reason }) => api("DELETE",
      `${adapterPath(adapter.id)}/canary?reason=${encodeURIComponent(reason)}`),
    `The canary of ${adapter.id} was cleared.`, refresh);
}

export function takeOut(adapter, version, verb, refresh) {
  const detail = verb === "reject"
    ? "A rejected version can never be promoted again."
    : "A retired version stays in the registry and can be promoted again.";
  return perform(
    { title: `${verb === "reject" ? "Reject" : "Retire"} v${version} of ${adapter.id}`,
      confirmLabel: verb === "reject" ? "Reject" : "Retire", detail },
    ({ reason }) => api("POST", `${adapterPath(adapter.id)}/versions/${version}/${verb}`,
      { reason }),
    `v${version} of ${adapter.id}: ${verb === "reject" ? "rejected" : "retired"}.`, refresh);
}

export function startTraining(adapter, refresh) {
  return perform(
    { title: `Train ${adapter.id} now`, confirmLabel: "Start training run",
      detail: "The trainer runs on the adapter's pending feedback now, whatever its " +
        "policy's thresholds; the run is recorded as yours." },
    ({ reason }) => api("POST", `${adapterPath(adapter.id)}/training-runs`, { reason }),
    `A training run of ${adapter.id} is queued.`, refresh);
}
