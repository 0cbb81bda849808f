// Small charts drawn as SVG by hand: bars (counts per hour), stacked bars (counts per hour
// and version) and a line (a figure across versions). Labels are SVG text nodes.

import { el, svg } from "./dom.js";

const WIDTH = 560;
const HEIGHT = 180;
const PAD = { left: 48, right: 12, top: 12, bottom: 32 };
const PLOT_W = WIDTH - PAD.left - PAD.right;
const PLOT_H = HEIGHT - PAD.top - PAD.bottom;

function frame(label, top, bottom, children) {
  return svg("svg", { class: "chart", viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img",
    "aria-label": label },
    svg("line", { class: "axis", x1: PAD.left, y1: PAD.top + PLOT_H, x2: WIDTH - PAD.right,
      y2: PAD.top + PLOT_H }),
    svg("text", { x: PAD.left - 6, y: PAD.top + 8, "text-anchor": "end" }, top),
    svg("text", { x: PAD.left - 6, y: PAD.top + PLOT_H, "text-anchor": "end" }, bottom),
    children);
}

// points: [{label, value}], value >= 0
export function barChart(label, points) {
  if (!points.length) return el("p", { class: "muted" }, "Nothing in this period.");
  const top = Math.max(...points.map((p) => p.value), 1);
  const slot = PLOT_W / points.length;
  const bars = points.map((p, i) => {
    const height = (p.value / top) * PLOT_H;
    return svg("g", {},
      svg("title", {}, `${p.label}: ${p.value}`),
      svg("rect", { class: "column", x: PAD.left + i * slot + slot * 0.15,
        y: PAD.top + PLOT_H - height, width: slot * 0.7, height }),
      i % Math.ceil(points.length / 8) === 0
        ? svg("text", { x: PAD.left + (i + 0.5) * slot, y: HEIGHT - 10,
          "text-anchor": "middle" }, p.label) : null);
  });
  return frame(label, String(top), "0", bars);
}

// points: [{label, value}] in order; a line through them.
export function lineChart(label, points) {
  if (!points.length) return el("p", { class: "muted" }, "No version has this figure.");
  const values = points.map((p) => p.value);
  const low = Math.min(...values);
  const high = Math.max(...values);
  const span = high - low || 1;
  const step = points.length > 1 ? PLOT_W / (points.length - 1) : 0;
  const at = (p, i) => [PAD.left + (points.length > 1 ? i * step : PLOT_W / 2),
    PAD.top + PLOT_H - ((p.value - low) / span) * PLOT_H];
  const line = svg("polyline", { class: "line",
    points: points.map((p, i) => at(p, i).join(",")).join(" ") });
  const marks = points.map((p, i) => {
    const [x, y] = at(p, i);
    return svg("g", {}, svg("title", {}, `${p.label}: ${p.value}`),
      svg("circle", { class: "point", cx: x, cy: y, r: 4 }),
      svg("text", { x, y: HEIGHT - 10, "text-anchor": "middle" }, p.label));
  });
  return frame(label, String(high), String(low), [line, marks]);
}

// slots: hour labels; series: [{name, values}] with one value per slot, stacked bottom up.
export function stackedChart(label, slots, series) {
  const totals = slots.map((_, i) => series.reduce((sum, s) => sum + s.values[i], 0));
  if (!totals.some((t) => t > 0)) return el("p", { class: "muted" }, "Nothing in this period.");
  const top = Math.max(...totals);
  const slot = PLOT_W / slots.length;
  const columns = slots.map((name, i) => {
    let base = PAD.top + PLOT_H;
    const parts = series.map((s, k) => {
      const height = (s.values[i] / top) * PLOT_H;
      base -= height;
      return s.values[i] ? svg("rect", { class: `column s${k % 6}`, height,
        x: PAD.left + i * slot + slot * 0.15, y: base, width: slot * 0.7 },
      svg("title", {}, `${name}, ${s.name}: ${s.values[i]}`)) : null;
    });
    return svg("g", {}, parts, i % Math.ceil(slots.length / 8) === 0
      ? svg("text", { x: PAD.left + (i + 0.5) * slot, y: HEIGHT - 10, "text-anchor": "middle" },
        name) : null);
  });
  const legend = el("p", { class: "legend" }, series.map((s, k) =>
    el("span", { class: `key s${k % 6}` }, s.name)));
  return [frame(label, String(top), "0", columns), legend];
}
