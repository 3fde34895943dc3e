// DOM helpers shared by the views. Everything shown is built with
// createElement/textContent, never innerHTML, so names coming from the
// broker (queues, users, message payloads) cannot inject markup.
"use strict";

// h("td", {class: "num"}, "3") -> <td class="num">3</td>.
// Attributes starting with "on" are event listeners; null/false are skipped.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "value") el.value = value;
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

// Replaces the children of `el`.
function fill(el, ...children) {
  el.replaceChildren();
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined) el.append(child);
  }
  return el;
}

// A table: `columns` are [header, (row) => cell content, class?].
// `key` gives each row a data-key attribute that tests and links rely on.
function table(columns, rows, key) {
  if (!rows.length) return h("p", { class: "muted" }, "Nothing here yet.");
  return h("table", { class: "list" },
    h("thead", {}, h("tr", {}, columns.map(([title, , cls]) => h("th", { class: cls }, title)))),
    h("tbody", {}, rows.map((row) =>
      h("tr", { "data-key": key ? key(row) : null },
        columns.map(([, cell, cls]) => h("td", { class: cls }, cell(row)))))));
}

function fmtNumber(n) {
  return typeof n === "number" ? n.toLocaleString("en") : "";
}

// "12.3 MiB" from a byte count; empty when there is none.
function fmtBytes(n) {
  if (typeof n !== "number") return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return i === 0 ? `${n} B` : `${n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
}

// "2d 3h", "3h 4m", "4m 5s" or "5s" from milliseconds; empty when none.
function fmtDuration(ms) {
  if (typeof ms !== "number") return "";
  const s = Math.floor(ms / 1000);
  const [d, hr, m, sec] = [Math.floor(s / 86400), Math.floor(s / 3600) % 24, Math.floor(s / 60) % 60, s % 60];
  if (d) return `${d}d ${hr}h`;
  if (hr) return `${hr}h ${m}m`;
  if (m) return `${m}m ${sec}s`;
  return `${sec}s`;
}

// "1.2/s" from a `*_details` object; empty when there is no rate.
function fmtRate(details) {
  const rate = details && typeof details.rate === "number" ? details.rate : null;
  return rate === null ? "" : `${rate.toFixed(rate < 10 ? 2 : 1)}/s`;
}

function fmtJson(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "object" && !Object.keys(value).length) return "";
  return JSON.stringify(value);
}

// A message in the flash line under the tabs; errors stay until replaced.
function flash(text, isError) {
  const el = document.getElementById("flash");
  el.className = isError ? "error" : "ok";
  el.textContent = text;
  clearTimeout(flash.timer);
  if (!isError) flash.timer = setTimeout(() => { el.textContent = ""; el.className = ""; }, 5000);
}

// A labelled form field.
function field(label, input) {
  return h("label", {}, h("span", {}, label), input);
}

// A JSON object typed in a textarea; empty = {}. Throws with a clear text.
function parseJsonObject(text, what) {
  if (!text.trim()) return {};
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new Error(`${what}: not valid JSON (${e.message})`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Error(`${what}: must be a JSON object such as {"x-max-length": 10}`);
  }
  return value;
}

// A form whose submit runs `action(formData)`, reporting errors in the
// flash line instead of reloading the page.
function form(attrs, fields, submitLabel, action) {
  const el = h("form", attrs, fields, h("button", { type: "submit" }, submitLabel));
  el.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = el.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await action(el);
    } catch (e) {
      flash(e.message, true);
    } finally {
      button.disabled = false;
    }
  });
  return el;
}

// A button that asks first, then runs `action`, reporting errors.
function dangerButton(label, question, action, attrs) {
  return h("button", {
    type: "button",
    class: "danger",
    ...attrs,
    onclick: async () => {
      if (question && !window.confirm(question)) return;
      try {
        await action();
      } catch (e) {
        flash(e.message, true);
      }
    },
  }, label);
}

// A <select> of vhost names, `selected` first chosen.
function vhostSelect(name, vhosts, selected) {
  return h("select", { name },
    vhosts.map((v) => h("option", { value: v.name, selected: v.name === selected }, v.name)));
}

// The views, by tab name; each file registers its own:
//   Views.name = { tab, render(root, params) -> refresh function or null }
// `render` builds the page once; the app calls the refresh function it
// returns at once and then every few seconds while the view is shown.
const Views = {};
