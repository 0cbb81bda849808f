// An adapter's versions as a table: where each came from, its gate figures beside the live
// version's, and (for the admin) the changes that apply to it.

import { promote, setCanary, takeOut } from "./actions.js";
import { el, entries, table, when } from "./dom.js";

// "0.71 (+0.09 vs live)": a version's figure beside the live version's.
function figures(version, live) {
  const names = Object.keys(version.metrics);
  if (!names.length) return "—";
  return names.map((name) => {
    const value = version.metrics[name];
    const base = live && live !== version ? live.metrics[name] : undefined;
    if (base === undefined) return el("div", {}, `${name} ${value}`);
    const delta = value - base;
    return el("div", {}, `${name} ${value} `,
      el("span", { class: delta >= 0 ? "up" : "down" },
        `(${delta >= 0 ? "+" : ""}${delta.toFixed(3)} vs live)`));
  });
}

function actions(adapter, version, refresh) {
  const isLive = version.version === adapter.live_version;
  const button = (label, verb, onClick) => el("button",
    { type: "button", class: "small", "data-action": verb, onclick: onClick }, label);
  if (isLive || version.status === "rejected") return [];
  return [
    button("Promote", "promote", () => promote(adapter, version.version, refresh)),
    version.version !== adapter.canary_version
      ? button("Canary", "canary", () => setCanary(adapter, version.version, refresh)) : null,
    version.status === "candidate"
      ? button("Retire", "retire", () => takeOut(adapter, version.version, "retire", refresh))
      : null,
    button("Reject", "reject", () => takeOut(adapter, version.version, "reject", refresh)),
  ];
}

export function versionsTable(adapter, versions, session, refresh) {
  const live = versions.find((v) => v.version === adapter.live_version);
  const admin = session.role === "admin";
  const headings = ["Version", "Status", "Source", "Created by", "Created", "Parent",
    "Tags", "Gate figures", ...(admin ? ["Actions"] : [])];
  const rows = [...versions].reverse().map((version) => el("tr",
    { "data-version": version.version, class: version.status },
    el("td", {}, `v${version.version}`),
    el("td", { class: "status" }, version.version === adapter.canary_version
      ? `${version.status}, canary ${adapter.canary_percent}%` : version.status),
    el("td", {}, version.source),
    el("td", {}, version.created_by),
    el("td", {}, when(version.created_at)),
    el("td", {}, version.parent_version ? `v${version.parent_version}` : "—"),
    el("td", {}, entries(version.tags)),
    el("td", {}, figures(version, live)),
    admin ? el("td", { class: "actions" }, actions(adapter, version, refresh)) : null));
  return table(headings, rows, { class: "versions" });
}
