// An adapter's training runs, newest first, with the progress of those still running.

import { el, isolated, table, when } from "./dom.js";

export const ACTIVE = new Set(["queued", "running"]);

// The trainer reports {step, steps, ...} while it trains; anything else shows as text.
function progress(run) {
  const { step, steps } = run.progress || {};
  if (ACTIVE.has(run.status) && Number.isFinite(step) && Number.isFinite(steps) && steps > 0) {
    return el("progress", { max: steps, value: step }, `${step}/${steps}`);
  }
  const pairs = Object.entries(run.progress || {});
  return pairs.length ? pairs.map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join(", ") : "—";
}

function figures(metrics) {
  const pairs = Object.entries(metrics || {}).filter(([, v]) => typeof v !== "object");
  return pairs.length ? pairs.map(([k, v]) => `${k}=${v}`).join(", ") : "—";
}

export function runsTable(runs) {
  if (!runs.length) return el("p", { class: "muted" }, "No training runs yet.");
  const headings = ["Run", "Status", "Requested by", "From → candidate", "Pairs", "Progress",
    "Figures", "Outcome", "Started", "Finished"];
  return table(headings, runs.map((run) => el("tr", { "data-run": run.id, class: run.status },
    el("td", {}, `#${run.id}`),
    el("td", {}, run.status),
    el("td", {}, run.requested_by || "policy"),
    el("td", {}, `${run.parent_version ? `v${run.parent_version}` : "—"} → ${
      run.candidate_version ? `v${run.candidate_version}` : "—"}`),
    el("td", { class: "number" }, run.pairs ?? "—"),
    el("td", {}, progress(run)),
    el("td", {}, figures(run.metrics)),
    el("td", {}, isolated(run.reason || "")),
    el("td", {}, when(run.started_at)),
    el("td", {}, when(run.finished_at)))), { class: "runs" });
}
