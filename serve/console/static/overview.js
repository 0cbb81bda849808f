// The overview: every tenant the session may see, its adapters, and how each one stands.

import { adapterPath, api } from "./api.js";
import { el, fill, isolated, section, table, when } from "./dom.js";

// What is rolling out: today a canary and its share of the traffic. Progressive rollouts,
// once the registry has them, report their step here too.
export function rolloutText(adapter) {
  if (!adapter.canary_version) return "none";
  return `canary v${adapter.canary_version} at ${adapter.canary_percent}%`;
}

function runText(run) {
  if (!run) return "none yet";
  const candidate = run.candidate_version ? ` (v${run.candidate_version})` : "";
  return `${run.status}${candidate}, ${when(run.finished_at || run.started_at || run.created_at)}`;
}

async function standing(adapter) {
  const base = adapterPath(adapter.id);
  const [runs, feedback, usage] = await Promise.all([
    api("GET", `${base}/training-runs?limit=1`),
    api("GET", `${base}/feedback-activity?hours=1`),
    api("GET", `${base}/usage?hours=1`),
  ]);
  const sum = (items, count) => items.reduce((total, item) => total + count(item), 0);
  return { adapter, run: runs[0], pending: feedback.pending,
    requests: sum(usage, (u) => u.requests),
    tokens: sum(usage, (u) => u.prompt_tokens + u.completion_tokens) };
}

function adapterRow({ adapter, run, pending, requests, tokens }) {
  return el("tr", { "data-adapter": adapter.id },
    el("td", {}, el("a", { href: `#/adapters/${adapter.id}` }, adapter.id)),
    el("td", { class: "description" }, isolated(adapter.description || "")),
    el("td", { class: "live" }, adapter.live_version ? `v${adapter.live_version}` : "none"),
    el("td", {}, rolloutText(adapter)),
    el("td", { class: "number requests" }, requests),
    el("td", { class: "number" }, tokens),
    el("td", { class: "number" }, pending),
    el("td", {}, runText(run)));
}

export async function renderOverview(main, session) {
  const adapters = await api("GET", "/admin/v1/adapters");
  const tenants = session.role === "admin"
    ? (await api("GET", "/admin/v1/tenants")).map((t) => t.name) : [session.tenant];
  const rows = await Promise.all(adapters.map(standing));
  const headings = ["Adapter", "Description", "Live", "Rollout", "Requests (this hour)",
    "Tokens (this hour)", "Pending feedback", "Last training run"];
  fill(main, el("h1", {}, "Overview"), tenants.map((tenant) => {
    const own = rows.filter((row) => row.adapter.id.startsWith(`${tenant}/`));
    return section(tenant, own.length
      ? table(headings, own.map(adapterRow), { class: "adapters" })
      : el("p", { class: "muted" }, "No adapters yet."));
  }));
}
