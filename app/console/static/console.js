// The console's few behaviours: draw graphs (Cytoscape + dagre), the per-minute chart
// (Chart.js), and keep both current when htmx swaps a live fragment in.
(function () {
  "use strict";

  var STATE_COLOURS = {
    waiting: "#9aa5b1", running: "#2f80ed", done: "#27ae60", error: "#eb5757",
    canceled: "#b08968", skipped: "#d0d5db", none: "#ffffff"
  };
  var TYPE_COLOURS = { emitter: "#e8f1fd", worker: "#fff6e0", consumer: "#e9f7ef" };
  var TYPE_SHAPES = { emitter: "round-rectangle", worker: "rectangle", consumer: "round-rectangle" };
  var STATUS_COLOURS = {
    initial: "#9aa5b1", running: "#2f80ed", paused: "#f2c94c", done: "#27ae60", error: "#eb5757"
  };
  var graphs = {};

  function readJson(id) {
    var node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }

  function drawGraph(container) {
    if (typeof cytoscape === "undefined") return;
    if (typeof cytoscapeDagre !== "undefined" && !drawGraph.registered) {
      cytoscape.use(cytoscapeDagre);
      drawGraph.registered = true;
    }
    var elements = readJson(container.getAttribute("data-elements")) || [];
    var cy = cytoscape({
      container: container,
      elements: elements,
      userZoomingEnabled: false,
      maxZoom: 1.5,
      boxSelectionEnabled: false,
      autoungrabify: true,
      style: [
        { selector: "node", style: {
          "label": "data(label)", "text-wrap": "wrap", "text-valign": "center",
          "text-halign": "center", "font-size": 11, "width": "label", "height": "label",
          "padding": "12px", "shape": function (n) { return TYPE_SHAPES[n.data("type")] || "ellipse"; },
          "background-color": function (n) { return TYPE_COLOURS[n.data("type")] || "#eee"; },
          "border-width": 2, "border-color": "#52606d"
        } },
        { selector: "node[state]", style: {
          "background-color": function (n) { return STATE_COLOURS[n.data("state")] || "#fff"; },
          "color": function (n) {
            var s = n.data("state");
            return (s === "running" || s === "done" || s === "error") ? "#fff" : "#1f2933";
          },
          "border-color": "#1f2933"
        } },
        { selector: "node.emitter", style: { "border-style": "double", "border-width": 4 } },
        { selector: "edge", style: {
          "curve-style": "bezier", "target-arrow-shape": "triangle", "width": 2,
          "line-color": "#7b8794", "target-arrow-color": "#7b8794", "label": "data(label)",
          "font-size": 10, "text-background-color": "#fff", "text-background-opacity": 1,
          "text-background-padding": "2px"
        } }
      ],
      layout: { name: typeof cytoscapeDagre !== "undefined" ? "dagre" : "breadthfirst",
                rankDir: "LR", nodeSep: 30, rankSep: 70, padding: 10 }
    });
    container.setAttribute("data-drawn", String(cy.nodes().length));
    graphs[container.id] = cy;
    return cy;
  }

  function colourProcessGraph() {
    var live = document.getElementById("process-live");
    var cy = graphs.graph;
    if (!live || !cy) return;
    var states = JSON.parse(live.getAttribute("data-node-states") || "{}");
    cy.nodes().forEach(function (n) { n.data("state", states[n.id()] || "none"); });
  }

  var chart = null;
  function drawChart() {
    var canvas = document.getElementById("per-minute");
    var data = readJson("per-minute-data");
    if (!canvas || !data || typeof Chart === "undefined") return;
    var datasets = Object.keys(data.series).map(function (status) {
      return { label: status, data: data.series[status],
               backgroundColor: STATUS_COLOURS[status] || "#999", stack: "s" };
    });
    if (chart) {
      chart.data.labels = data.labels;
      chart.data.datasets = datasets;
      chart.update("none");
      return;
    }
    chart = new Chart(canvas, {
      type: "bar",
      data: { labels: data.labels, datasets: datasets },
      options: {
        animation: false, maintainAspectRatio: false,
        scales: { x: { stacked: true, ticks: { maxTicksLimit: 12 } },
                  y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } },
        plugins: { legend: { position: "bottom" } }
      }
    });
    canvas.setAttribute("data-drawn", "1");
  }

  function init() {
    document.querySelectorAll(".graph[data-elements]").forEach(drawGraph);
    colourProcessGraph();
    drawChart();
  }

  document.addEventListener("DOMContentLoaded", init);
  document.addEventListener("htmx:afterSettle", function () {
    colourProcessGraph();
    drawChart();
  });
})();
