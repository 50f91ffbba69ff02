// The job graph as SVG: nodes in columns by dependency depth (a node sits one column right of
// its deepest need), edges as curves from each need to the node; `update` restyles one node.

const NS = "http://www.w3.org/2000/svg";
const W = 176, H = 66, GX = 56, GY = 18, PAD = 8;

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** {id -> {col, row}} with col = dependency depth. */
export function layout(nodes) {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const depth = new Map();
  const visiting = new Set();
  const depthOf = (id) => {
    if (depth.has(id)) return depth.get(id);
    if (visiting.has(id)) return 0; // a cycle never validates; do not loop on one
    visiting.add(id);
    const needs = (byId.get(id)?.needs || []).filter((n) => byId.has(n));
    const d = needs.length ? 1 + Math.max(...needs.map(depthOf)) : 0;
    depth.set(id, d);
    return d;
  };
  const rows = [];
  const pos = new Map();
  for (const n of nodes) {
    const col = depthOf(n.id);
    rows[col] = (rows[col] || 0) + 1;
    pos.set(n.id, { col, row: rows[col] - 1 });
  }
  return { pos, cols: rows.length, maxRows: Math.max(1, ...rows.filter(Boolean)) };
}

function clip(text, max) { return text.length > max ? `${text.slice(0, max - 1)}…` : text; }

/** Draw `nodes` into `container`; returns {update(node)} to restyle one node later. */
export function drawGraph(container, nodes, { label = "Job graph" } = {}) {
  const { pos, cols, maxRows } = layout(nodes);
  const width = PAD * 2 + cols * W + (cols - 1) * GX;
  const height = PAD * 2 + maxRows * H + (maxRows - 1) * GY;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label,
    class: "graph-svg", style: `max-width:${width}px` });
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
    markerHeight: 7, orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" }));
  defs.append(marker);
  root.append(defs);
  const xy = (id) => {
    const { col, row } = pos.get(id);
    return { x: PAD + col * (W + GX), y: PAD + row * (H + GY) };
  };
  const edges = svg("g", { class: "edges" });
  for (const n of nodes) {
    for (const need of n.needs || []) {
      if (!pos.has(need)) continue;
      const a = xy(need), b = xy(n.id);
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x - 2, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
      edges.append(svg("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, class: "edge",
        "marker-end": "url(#arrow)", "data-from": need, "data-to": n.id }));
    }
  }
  root.append(edges);
  const groups = new Map();
  for (const n of nodes) {
    const { x, y } = xy(n.id);
    const g = svg("g", { class: "gnode", "data-node": n.id, transform: `translate(${x},${y})` });
    const title = svg("title");
    g.append(title, svg("rect", { class: "box", width: W, height: H, rx: 8 }),
      svg("text", { class: "nid", x: 10, y: 20 }, clip(n.id, 20)),
      svg("text", { class: "ntask", x: 10, y: 37 }, clip(`${n.task} · ${n.plane}`, 26)),
      svg("text", { class: "nstatus", x: 10, y: 54 }),
      svg("rect", { class: "bar-bg", x: 96, y: 47, width: 70, height: 8, rx: 4 }),
      svg("rect", { class: "bar", x: 96, y: 47, width: 0, height: 8, rx: 4 }));
    root.append(g);
    groups.set(n.id, { g, title });
  }
  container.replaceChildren(root);

  function update(n) {
    const entry = groups.get(n.id);
    if (!entry) return;
    const status = n.status || "pending";
    const progress = Math.max(0, Math.min(1, n.progress || 0));
    entry.g.setAttribute("class", `gnode s-${status}`);
    entry.g.setAttribute("data-status", status);
    entry.g.querySelector(".nstatus").textContent = status;
    const bar = entry.g.querySelector(".bar");
    bar.setAttribute("width", String(Math.round(70 * (status === "succeeded" ? 1 : progress))));
    entry.title.textContent = `${n.id} (${n.task}): ${status}, ${Math.round(progress * 100)}%`;
  }
  nodes.forEach(update);
  return { update };
}
