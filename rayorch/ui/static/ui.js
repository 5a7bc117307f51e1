// rayorch ui: a little plain JS. Unit panel on cell click, state filters, cell selection for
// "reprocess selected", and auto-refresh of cell states while the backfill runs.
"use strict";
(function () {
  const body = document.body;
  const refreshMs = 1000 * parseFloat(body.dataset.refreshS || "3");

  // Pages without live cells (backfill list, cluster) reload themselves while work runs.
  if (body.dataset.reload === "1") {
    setTimeout(function () { location.reload(); }, Math.max(refreshMs, 2000));
  }

  const grid = document.getElementById("grid");
  if (!grid) return;
  const panel = document.getElementById("unit-panel");
  const selectMode = document.getElementById("select-mode");
  const selected = new Set();
  const stateName = { waiting: "waiting for data" };
  let focused = null;

  grid.addEventListener("click", function (ev) {
    const cell = ev.target.closest("a.cell");
    if (!cell) return;
    ev.preventDefault();
    if (selectMode && selectMode.checked) {
      const k = cell.dataset.k;
      if (selected.has(k)) { selected.delete(k); cell.classList.remove("sel"); }
      else { selected.add(k); cell.classList.add("sel"); }
      updateReprocessLink();
      return;
    }
    if (focused) focused.classList.remove("focus");
    focused = cell; cell.classList.add("focus");
    showUnit(cell.getAttribute("href") + "?backfill=" + encodeURIComponent(body.dataset.backfill));
  });

  // Tooltips are set on hover, not rendered per cell: a 30 x 90 grid stays a small page.
  grid.addEventListener("mouseover", function (ev) {
    const cell = ev.target.closest("a.cell");
    if (cell && !cell.title) {
      const st = (cell.className.match(/\bs-([a-z]+)\b/) || [])[1] || "";
      cell.title = cell.dataset.k.split("/").slice(2).join("/") + ": " + (stateName[st] || st);
    }
  });

  function showUnit(href) {
    const url = href + (href.indexOf("?") < 0 ? "?" : "&") + "fragment=1";
    fetch(url).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.text();
    }).then(function (html) {
      panel.innerHTML = html;
    }).catch(function (e) {
      panel.textContent = "could not load the unit: " + e.message;
    });
  }

  function updateReprocessLink() {
    const a = document.getElementById("act-reprocess");
    if (!a) return;
    const q = Array.from(selected).map(function (k) { return "unit=" + encodeURIComponent(k); });
    a.href = "/backfills/" + encodeURIComponent(body.dataset.backfill) + "/actions/reprocess" +
      (q.length ? "?" + q.join("&") : "");
    a.textContent = "Reprocess selected (" + selected.size + ")…";
  }

  document.querySelectorAll("button.filter").forEach(function (btn) {
    btn.addEventListener("click", function () {
      document.querySelectorAll("button.filter").forEach(function (b) { b.classList.remove("on"); });
      btn.classList.add("on");
      if (btn.dataset.filter) grid.dataset.filter = btn.dataset.filter;
      else delete grid.dataset.filter;
    });
  });

  // Auto-refresh: poll the compact JSON API and move cells between state classes in place.
  if (body.dataset.active !== "1") return;
  const cells = new Map();
  grid.querySelectorAll("a.cell").forEach(function (c) { cells.set(c.dataset.k, c); });
  const cssOf = {
    "done": "s-done", "running": "s-running", "pending": "s-pending", "waiting for data": "s-waiting",
    "held": "s-held", "failed": "s-failed", "blocked": "s-blocked", "stale": "s-stale"
  };
  function showCounts(bf) {
    const box = document.getElementById("bf-counts");
    if (!box) return;
    box.textContent = "";
    Object.keys(bf.counts).forEach(function (name) {
      if (!bf.counts[name]) return;
      const chip = document.createElement("span");
      chip.className = "chip " + cssOf[name];
      chip.dataset.state = name;
      chip.textContent = name + " " + bf.counts[name];
      box.appendChild(chip);
    });
    const total = document.createElement("small");
    total.textContent = " " + bf.total + " units";
    box.appendChild(total);
  }
  function poll() {
    fetch("/api/backfills/" + encodeURIComponent(body.dataset.backfill) + "?compact=1")
      .then(function (r) { return r.json(); })
      .then(function (data) {
        data.states.forEach(function (pair) {
          const c = cells.get(pair[0]);
          const css = cssOf[pair[1]];
          if (c && css && !c.classList.contains(css)) {
            c.className = c.className.replace(/\bs-[a-z]+\b/, css);
            c.title = "";
          }
        });
        showCounts(data.backfill);
        if (!data.backfill.active) { location.reload(); return; }
        setTimeout(poll, refreshMs);
      })
      .catch(function () { setTimeout(poll, refreshMs * 2); });
  }
  setTimeout(poll, refreshMs);
})();
