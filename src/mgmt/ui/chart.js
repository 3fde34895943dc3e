// Line charts drawn by hand on a <canvas>: time on x, value on y, one
// line per series, a legend with the newest values underneath.
//
// The canvas carries what it shows as data attributes, so that scripts
// and tests can read it without parsing pixels:
//   data-points  number of points of the longest series
//   data-last    {"label": newest value, ...} as JSON
//   data-peak    {"label": highest value shown, ...} as JSON
"use strict";

const SERIES_COLORS = ["#c0504d", "#4f81bd", "#9bbb59", "#8064a2", "#f79646"];

// A titled chart box; call `.draw(series)` to (re)draw it.
function chartBox(title, id, unit) {
  const canvas = h("canvas", { id, class: "chart", width: 480, height: 180 });
  const legend = h("ul", { class: "legend" });
  const el = h("div", { class: "card chart-box" }, h("h3", {}, title), canvas, legend);
  return {
    el,
    canvas,
    draw(series) {
      drawChart(canvas, series, unit);
      fill(legend, series.map((s, i) => {
        const last = s.points.length ? s.points[s.points.length - 1][1] : 0;
        return h("li", {},
          h("span", { class: "swatch", style: `background:${SERIES_COLORS[i % SERIES_COLORS.length]}` }),
          `${s.label} `, h("strong", {}, formatValue(last, unit)));
      }));
    },
  };
}

function formatValue(v, unit) {
  if (unit === "/s") return `${v.toFixed(v < 10 ? 2 : 1)}/s`;
  // Grid lines of small counts fall between integers.
  return Number.isInteger(v) ? v.toLocaleString("en") : v.toFixed(1);
}

// series: [{label, points: [[timestamp ms, value], ...] oldest first}]
function drawChart(canvas, series, unit) {
  // Sharp lines on high-density screens: scale the backing store.
  const ratio = window.devicePixelRatio || 1;
  const cssWidth = canvas.clientWidth || canvas.width;
  const cssHeight = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(cssWidth * ratio)) {
    canvas.width = Math.round(cssWidth * ratio);
    canvas.height = Math.round(cssHeight * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, cssWidth, cssHeight);

  const pad = { left: 48, right: 10, top: 10, bottom: 22 };
  const width = cssWidth - pad.left - pad.right;
  const height = cssHeight - pad.top - pad.bottom;
  const all = series.flatMap((s) => s.points);
  const last = {};
  for (const s of series) last[s.label] = s.points.length ? s.points[s.points.length - 1][1] : 0;
  canvas.dataset.points = String(Math.max(0, ...series.map((s) => s.points.length)));
  canvas.dataset.last = JSON.stringify(last);
  const peak = {};
  for (const s of series) peak[s.label] = Math.max(0, ...s.points.map((p) => p[1]));
  canvas.dataset.peak = JSON.stringify(peak);

  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#777";
  if (all.length < 2) {
    ctx.fillText("Collecting samples…", pad.left + 8, pad.top + height / 2);
    return;
  }
  const t0 = Math.min(...all.map((p) => p[0]));
  const t1 = Math.max(...all.map((p) => p[0]));
  const maxValue = niceCeiling(Math.max(...all.map((p) => p[1])));
  const x = (t) => pad.left + (t1 === t0 ? width : ((t - t0) / (t1 - t0)) * width);
  const y = (v) => pad.top + height - (v / maxValue) * height;

  // Grid and y labels: 0, half, max.
  ctx.strokeStyle = "#e3e3e3";
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const v of [0, maxValue / 2, maxValue]) {
    ctx.beginPath();
    ctx.moveTo(pad.left, y(v));
    ctx.lineTo(pad.left + width, y(v));
    ctx.stroke();
    ctx.fillText(formatValue(v, unit), pad.left - 6, y(v));
  }
  // x labels: the oldest and newest times.
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  ctx.fillText(new Date(t0).toLocaleTimeString(), pad.left, pad.top + height + 6);
  ctx.textAlign = "right";
  ctx.fillText(new Date(t1).toLocaleTimeString(), pad.left + width, pad.top + height + 6);

  series.forEach((s, i) => {
    if (!s.points.length) return;
    ctx.strokeStyle = SERIES_COLORS[i % SERIES_COLORS.length];
    ctx.lineWidth = 2;
    ctx.beginPath();
    s.points.forEach(([t, v], k) => (k ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
    ctx.stroke();
  });
}

// The smallest 1, 2 or 5 times a power of ten at or above v (at least 1).
function niceCeiling(v) {
  if (!(v > 1)) return 1;
  const power = 10 ** Math.floor(Math.log10(v));
  for (const step of [1, 2, 5, 10]) if (step * power >= v) return step * power;
  return 10 * power;
}

// Chart series from the API's `samples` (newest first, cumulative
// counters for message stats): values as they are, or per-second rates
// between consecutive samples.
function seriesFromSamples(label, details, asRate) {
  const samples = ((details && details.samples) || []).slice().reverse();
  if (!asRate) return { label, points: samples.map((s) => [s.timestamp, s.sample]) };
  const points = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = (samples[i].timestamp - samples[i - 1].timestamp) / 1000;
    const dv = samples[i].sample - samples[i - 1].sample;
    if (dt > 0) points.push([samples[i].timestamp, Math.max(0, dv / dt)]);
  }
  return { label, points };
}
