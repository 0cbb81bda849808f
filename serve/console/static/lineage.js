// An adapter's versions as a lineage graph: one node per version, left to right by number,
// an arc from each version's parent to it; the node's class gives its status.

import { svg } from "./dom.js";

const STEP = 64;
const ROW = 70;
const RADIUS = 14;

export function lineageGraph(adapter, versions) {
  const width = Math.max(versions.length, 1) * STEP + STEP;
  const x = (number) => STEP / 2 + (versions.findIndex((v) => v.version === number) + 0.5) * STEP;
  const arcs = versions.filter((v) => v.parent_version).map((v) => {
    const from = x(v.parent_version);
    const to = x(v.version);
    const lift = Math.min(ROW - RADIUS - 6, 12 + Math.abs(to - from) / 4);
    return svg("path", { class: "edge",
      d: `M ${from} ${ROW} C ${from} ${ROW - lift * 1.3}, ${to} ${ROW - lift * 1.3}, ${to} ${ROW}` });
  });
  const nodes = versions.map((v) => {
    const roles = [v.status];
    if (v.version === adapter.canary_version) roles.push("canary");
    return svg("g", { class: `node ${roles.join(" ")}`, "data-version": v.version },
      svg("title", {}, `v${v.version}: ${v.status}, ${v.source}, by ${v.created_by}`),
      svg("circle", { cx: x(v.version), cy: ROW, r: RADIUS }),
      svg("text", { x: x(v.version), y: ROW + 4, "text-anchor": "middle" }, `v${v.version}`),
      svg("text", { x: x(v.version), y: ROW + 32, "text-anchor": "middle", class: "label" },
        v.version === adapter.live_version ? "live" : v.status));
  });
  return svg("svg", { class: "lineage", viewBox: `0 0 ${width} ${ROW + 44}`, width,
    role: "img", "aria-label": "version lineage" }, arcs, nodes);
}
