// tcCharts: time-series line charts drawn as inline SVG. No dependencies.
// render(el, chart) replaces el's content; chart is {id, title, unit,
// series: [{name, points: [[x, y], ...]}]} with x in seconds.
var tcCharts = (function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
  var W = 560, H = 240, L = 64, R = 12, T = 28, B = 58;

  function el(name, attrs, text) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(v, unit) {
    var a = Math.abs(v);
    if (unit === "bytes") {
      var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
      while (a >= 1024 && i < u.length - 1) { a /= 1024; v /= 1024; i++; }
      return v.toFixed(a >= 100 || i === 0 ? 0 : 1) + " " + u[i];
    }
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
    if (a >= 100) return v.toFixed(0);
    if (a >= 1) return v.toFixed(1);
    if (a === 0) return "0";
    return v.toPrecision(2);
  }
  function finite(p) { return typeof p[0] === "number" && typeof p[1] === "number" && isFinite(p[0]) && isFinite(p[1]); }

  function render(host, chart) {
    while (host.firstChild) host.removeChild(host.firstChild);
    var series = (chart.series || []).map(function (s) { return {name: s.name, points: (s.points || []).filter(finite)}; });
    var x0 = Infinity, x1 = -Infinity, y0 = 0, y1 = -Infinity, n = 0;
    series.forEach(function (s) {
      s.points.forEach(function (p) {
        x0 = Math.min(x0, p[0]); x1 = Math.max(x1, p[0]);
        y0 = Math.min(y0, p[1]); y1 = Math.max(y1, p[1]);
        n++;
      });
    });
    var svg = el("svg", {"class": "tc-chart", viewBox: "0 0 " + W + " " + H, width: W, height: H,
      role: "img", "aria-label": chart.title, "data-points": n, "data-chart": chart.id || ""});
    svg.appendChild(el("text", {x: L, y: 16, "font-size": 13, "font-weight": "bold", fill: "#222"}, chart.title + (chart.unit ? " (" + chart.unit + ")" : "")));
    host.appendChild(svg);
    if (n === 0) {
      svg.appendChild(el("text", {x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#888", "font-size": 12}, "no data"));
      return svg;
    }
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 <= y0) { y1 = y0 + 1; }
    y1 *= 1.05;
    var pw = W - L - R, ph = H - T - B;
    var sx = function (x) { return L + (x - x0) / (x1 - x0) * pw; };
    var sy = function (y) { return T + ph - (y - y0) / (y1 - y0) * ph; };
    var axis = el("g", {"class": "tc-axis", "font-size": 10, fill: "#555"});
    for (var i = 0; i <= 4; i++) {
      var yv = y0 + (y1 - y0) * i / 4, yp = sy(yv);
      axis.appendChild(el("line", {x1: L, x2: W - R, y1: yp, y2: yp, stroke: "#e4e4e4"}));
      axis.appendChild(el("text", {x: L - 4, y: yp + 3, "text-anchor": "end"}, fmt(yv, chart.unit)));
      var xv = x0 + (x1 - x0) * i / 4;
      axis.appendChild(el("text", {x: sx(xv), y: T + ph + 14, "text-anchor": "middle"}, xv.toFixed(x1 - x0 < 20 ? 1 : 0) + "s"));
    }
    axis.appendChild(el("line", {x1: L, x2: L, y1: T, y2: T + ph, stroke: "#999"}));
    axis.appendChild(el("line", {x1: L, x2: W - R, y1: T + ph, y2: T + ph, stroke: "#999"}));
    svg.appendChild(axis);
    var lx = L, ly = H - 22;
    series.forEach(function (s, k) {
      var color = COLORS[k % COLORS.length];
      if (s.points.length > 0) {
        var d = s.points.map(function (p, j) { return (j ? "L" : "M") + sx(p[0]).toFixed(1) + " " + sy(p[1]).toFixed(1); }).join("");
        svg.appendChild(el("path", {"class": "tc-series", d: d, fill: "none", stroke: color, "stroke-width": 1.5, "data-points": s.points.length}));
        if (s.points.length === 1) {
          var p = s.points[0];
          svg.appendChild(el("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: color}));
        }
      }
      var label = s.name + (s.points.length ? " " + fmt(s.points[s.points.length - 1][1], chart.unit) : "");
      if (lx + 10 + label.length * 6 > W - R) { lx = L; ly += 13; }
      svg.appendChild(el("rect", {x: lx, y: ly - 8, width: 8, height: 8, fill: color}));
      svg.appendChild(el("text", {x: lx + 11, y: ly, "font-size": 10, fill: "#333"}, label));
      lx += 22 + label.length * 6;
    });
    return svg;
  }
  return {render: render};
})();
