// One adapter's page: its versions (table and lineage), gate figures, feedback, training
// runs and history, and for the admin the changes that apply to it. While a run is queued
// or running, the page reads it again every few seconds.

import { clearCanary, rollback, startTraining } from "./actions.js";
import { adapterPath, api } from "./api.js";
import { barChart, lineChart, stackedChart } from "./charts.js";
import { el, fill, isolated, section } from "./dom.js";
import { hourKey, hourLabel, lastHours } from "./hours.js";
import { lineageGraph } from "./lineage.js";
import { rolloutText } from "./overview.js";
import { ACTIVE, runsTable } from "./runs.js";
import { timeline } from "./timeline.js";
import { versionsTable } from "./versions.js";

const RUN_POLL_MS = 3000;
const HOURS = 24;

function summary(adapter) {
  return el("dl", { class: "summary" },
    el("dt", {}, "Live"), el("dd", { id: "live-version" },
      adapter.live_version ? `v${adapter.live_version}` : "none"),
    el("dt", {}, "Rollout"), el("dd", {}, rolloutText(adapter)),
    el("dt", {}, "Created"), el("dd", {}, `by ${adapter.created_by}`));
}

function adapterActions(adapter, refresh) {
  const button = (label, action, onClick) =>
    el("button", { type: "button", "data-action": action, onclick: onClick }, label);
  return el("div", { class: "buttons", id: "adapter-actions" },
    adapter.live_version ? button("Roll back", "rollback", () => rollback(adapter, refresh)) : null,
    adapter.canary_version
      ? button("Clear canary", "clear-canary", () => clearCanary(adapter, refresh)) : null,
    button("Start training run", "train", () => startTraining(adapter, refresh)));
}

// The figure to chart across versions: the first one any version reports, selectable.
function gateChart(versions) {
  const names = [...new Set(versions.flatMap((v) => Object.keys(v.metrics)))].sort();
  if (!names.length) return el("p", { class: "muted" }, "No version reports gate figures.");
  const holder = el("div", {});
  const draw = (name) => fill(holder, lineChart(name, versions
    .filter((v) => name in v.metrics)
    .map((v) => ({ label: `v${v.version}`, value: v.metrics[name] }))));
  const choice = el("select", { name: "metric" }, names.map((n) => el("option", { value: n }, n)));
  choice.addEventListener("change", () => draw(choice.value));
  draw(names[0]);
  return [el("label", {}, "Figure ", choice), holder];
}

function feedbackChart(activity) {
  const counts = new Map(activity.per_hour.map((h) => [hourKey(h.hour), h.count]));
  return barChart("feedback per hour", lastHours(HOURS).map((key) => ({
    label: hourLabel(key), value: counts.get(key) || 0 })));
}

// One stack per hour, one colour per version: how traffic moves between versions.
function usageChart(usage, label, count) {
  const slots = lastHours(HOURS);
  const versions = [...new Set(usage.map((u) => u.version))].sort((a, b) => a - b);
  const series = versions.map((version) => {
    const byHour = new Map(usage.filter((u) => u.version === version)
      .map((u) => [hourKey(u.hour), count(u)]));
    return { name: `v${version}`, values: slots.map((key) => byHour.get(key) || 0) };
  });
  return stackedChart(label, slots.map(hourLabel), series);
}

async function load(adapterId) {
  const base = adapterPath(adapterId);
  const [adapter, versions, history, runs, feedback, usage] = await Promise.all([
    api("GET", base), api("GET", `${base}/versions`), api("GET", `${base}/history?limit=200`),
    api("GET", `${base}/training-runs?limit=20`),
    api("GET", `${base}/feedback-activity?hours=${HOURS}`),
    api("GET", `${base}/usage?hours=${HOURS}`)]);
  return { adapter, versions, history, runs, feedback, usage };
}

export async function renderAdapter(main, session, adapterId) {
  const page = `#/adapters/${adapterId}`;
  const refresh = () => (location.hash === page ? renderAdapter(main, session, adapterId) : null);
  const { adapter, versions, history, runs, feedback, usage } = await load(adapterId);
  const admin = session.role === "admin";
  fill(main, 
    el("h1", {}, adapter.id),
    el("p", { class: "description" }, isolated(adapter.description || "")),
    summary(adapter),
    admin ? adapterActions(adapter, refresh) : null,
    section("Versions", versionsTable(adapter, versions, session, refresh)),
    section("Lineage", lineageGraph(adapter, versions)),
    el("div", { class: "charts" },
      section(`Requests per hour by version (last ${HOURS} h)`,
        usageChart(usage, "requests per hour", (u) => u.requests)),
      section(`Tokens per hour by version (prompt and generated)`,
        usageChart(usage, "tokens per hour", (u) => u.prompt_tokens + u.completion_tokens)),
      section("A gate figure across versions", gateChart(versions)),
      section(`Feedback per hour (last ${HOURS} h, ${feedback.pending} pending)`,
        feedbackChart(feedback))),
    section("Training runs", runsTable(runs)),
    section("History", timeline(history)));
  if (runs.some((run) => ACTIVE.has(run.status))) {
    setTimeout(() => refresh()?.catch(() => null), RUN_POLL_MS);
  }
}
