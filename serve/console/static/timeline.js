// An adapter's history as a timeline, newest first: what happened, who did it, and why.

import { el, isolated, when } from "./dom.js";

function change(event) {
  const from = event.from_version ? `v${event.from_version}` : null;
  const to = event.to_version ? `v${event.to_version}` : null;
  if (from && to) return `${from} → ${to}`;
  return from || to || "";
}

export function timeline(events) {
  if (!events.length) return el("p", { class: "muted" }, "Nothing has happened yet.");
  return el("ol", { class: "timeline" }, [...events].reverse().map((event) =>
    el("li", { "data-kind": event.kind },
      el("span", { class: "at" }, when(event.at)),
      el("span", { class: "kind" }, event.kind.replaceAll("_", " ")),
      el("span", { class: "change" }, change(event)),
      el("span", { class: "actor" }, event.actor),
      event.reason ? el("q", { class: "reason" }, isolated(event.reason)) : null)));
}
