// Helpers shared by the gateway's status page and the aggregator's admin page: DOM building (text
// only, never HTML from data), token handling, JSON requests, tables and small SVG line charts.

const SVG = "http://www.w3.org/2000/svg";

/** An element with attributes and children (strings become text nodes). */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replace the children of `#id` with `nodes`. */
export function fill(id, ...nodes) {
  document.getElementById(id).replaceChildren(...nodes.flat(Infinity));
}

export function badge(text, kind = "") {
  return h("span", { class: `badge ${kind}` }, text);
}

/** The token the page sends as `Authorization: Bearer`, kept for this tab only (sessionStorage).
 *  A link may carry it as `#token=...` (a fragment never reaches a server or its log): it is
 *  taken from there once and removed from the address bar. */
export class Token {
  constructor(key) {
    this.key = key;
    const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (match) {
      sessionStorage.setItem(key, decodeURIComponent(match[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
  }
  get value() { return sessionStorage.getItem(this.key); }
  set(value) { value ? sessionStorage.setItem(this.key, value) : sessionStorage.removeItem(this.key); }
  headers() { return this.value ? { Authorization: `Bearer ${this.value}` } : {}; }
}

export class AuthError extends Error {}

/** fetch + JSON with the token; throws AuthError on 401 and an Error naming the problem otherwise. */
export async function request(token, path, { method = "GET", body } = {}) {
  const headers = { ...token.headers() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) throw new AuthError(await detail(response));
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${await detail(response)}`);
  return response.status === 204 ? null : response.json();
}

async function detail(response) {
  const text = await response.text();
  try {
    const parsed = JSON.parse(text);
    return parsed.detail || parsed.error || text;
  } catch {
    return text;
  }
}

/** A form asking for the token (shown in `#notice` when a request got 401). */
export function askForToken(token, what, onToken) {
  const input = h("input", { type: "password", placeholder: what, autocomplete: "off", "aria-label": what });
  const form = h("form", { class: "token", onsubmit: (event) => {
    event.preventDefault();
    token.set(input.value.trim());
    notice();
    onToken();
  } }, h("span", {}, `This page needs ${what}.`), input, h("button", { class: "primary", type: "submit" }, "Use it"));
  notice(form);
}

/** Show (or, without content, hide) the notice bar. */
export function notice(...content) {
  const bar = document.getElementById("notice");
  bar.replaceChildren(...content);
  bar.classList.toggle("shown", content.length > 0);
}

/** A table of `rows` with `columns` = [[heading, row => cell], ...]; `empty` when there are none. */
export function table(columns, rows, empty = "Nothing yet.") {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map(([title]) => h("th", {}, title)))),
    h("tbody", {}, rows.map((row) => h("tr", {}, columns.map(([, cell]) => h("td", {}, cell(row)))))));
}

/** `dl` of [term, value] pairs. */
export function facts(pairs) {
  return h("dl", {}, pairs.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value ?? "—")]));
}

export function time(value) {
  if (value === null || value === undefined) return "—";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return date.toLocaleTimeString([], { hour12: false });
}

export function bytes(value) {
  if (value === null || value === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let size = value, unit = 0;
  while (size >= 1024 && unit < units.length - 1) { size /= 1024; unit += 1; }
  return `${unit ? size.toFixed(1) : size} ${units[unit]}`;
}

export function short(id) {
  return id ? h("code", { title: id }, String(id).slice(0, 8)) : "—";
}

export const COLOURS = ["#2457c5", "#d9480f", "#12805c", "#862e9c", "#c01c28", "#0b7285"];

/** An SVG line chart: `series` = [{ name, colour, points: [[x, y], ...] }], x are integers
 *  (positions on the x axis) labelled by `xLabel(x)`. */
export function lineChart(title, series, xLabel) {
  const width = 520, height = 220, left = 48, right = 12, top = 10, bottom = 26;
  const points = series.flatMap((s) => s.points);
  const xs = points.map(([x]) => x), ys = points.map(([, y]) => y);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const px = (x) => left + (x1 === x0 ? (width - left - right) / 2 : ((x - x0) / (x1 - x0)) * (width - left - right));
  const py = (y) => top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", title);
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    add("line", { class: "grid", x1: left, x2: width - right, y1: py(y), y2: py(y) });
    add("text", { x: left - 6, y: py(y) + 4, "text-anchor": "end" }, Number(y.toPrecision(3)).toString());
  }
  add("line", { class: "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom });
  const step = Math.max(1, Math.ceil((x1 - x0 + 1) / 6));
  for (let x = x0; x <= x1; x += step) {
    add("text", { x: px(x), y: height - 8, "text-anchor": "middle" }, xLabel(x));
  }
  for (const s of series) {
    const sorted = [...s.points].sort((a, b) => a[0] - b[0]);
    add("polyline", {
      points: sorted.map(([x, y]) => `${px(x)},${py(y)}`).join(" "),
      fill: "none", stroke: s.colour, "stroke-width": 2,
    });
    for (const [x, y] of sorted) add("circle", { cx: px(x), cy: py(y), r: 3, fill: s.colour }, undefined)
      .append(Object.assign(document.createElementNS(SVG, "title"), { textContent: `${s.name}: ${y}` }));
  }
  return h("div", { class: "chart" }, h("h3", {}, title),
    h("div", { class: "legend" }, series.map((s) => h("span", { style: `--swatch:${s.colour}` }, s.name))), svg);
}
