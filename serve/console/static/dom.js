// Builds the page's nodes. Every piece of data becomes a text node or an attribute value:
// nothing here parses markup, so a name or reason holding "<script>" shows as those letters.

const SVG_NS = "http://www.w3.org/2000/svg";

function setAttributes(node, attributes) {
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
}

function appendAll(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attributes);
  return appendAll(node, children);
}

export function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttributes(node, attributes);
  return appendAll(node, children);
}

// "2026-12-05T01:02:03.456Z" -> "2026-12-05 01:02 UTC": the same for every operator.
export function when(iso) {
  return iso ? `${iso.slice(0, 10)} ${iso.slice(11, 16)} UTC` : "—";
}

export function section(title, ...children) {
  return el("section", {}, el("h2", {}, title), ...children);
}

export function table(headings, rows, attributes = {}) {
  return el("table", attributes,
    el("thead", {}, el("tr", {}, headings.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

// User-supplied text in an element of its own whose direction is isolated: a right-to-left
// override left open in one tag or reason cannot reverse what comes after it.
export function isolated(text) {
  return el("bdi", {}, text);
}

export function entries(mapping) {
  const pairs = Object.entries(mapping || {});
  if (!pairs.length) return "—";
  return pairs.flatMap(([k, v], i) => [i ? ", " : null, isolated(`${k}=${v}`)]);
}

// Replaces a node's children; arrays among them are flattened, data becomes text.
export function fill(node, ...children) {
  node.replaceChildren();
  return appendAll(node, children);
}
