// kdbench leaderboard: sortable tables and row filters. No dependencies, no network.
"use strict";

function cellKey(row, index, numeric) {
  const cell = row.cells[index];
  if (!cell) return numeric ? null : "";
  const raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
  if (!numeric) return raw.toLowerCase();
  const v = parseFloat(raw);
  return Number.isFinite(v) ? v : null;
}

function sortBy(table, th) {
  const index = Array.prototype.indexOf.call(th.parentNode.children, th);
  const numeric = th.dataset.type === "number";
  const ascending = th.getAttribute("aria-sort") !== "ascending";
  table.querySelectorAll("thead th").forEach((h) => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = cellKey(a, index, numeric);
    const y = cellKey(b, index, numeric);
    if (x === null || x === "") return (y === null || y === "") ? 0 : 1;  // missing values last
    if (y === null || y === "") return -1;
    const c = x < y ? -1 : x > y ? 1 : 0;
    return ascending ? c : -c;
  });
  rows.forEach((r) => body.appendChild(r));
}

function applyFilters(box) {
  const table = document.getElementById(box.dataset.filterFor);
  if (!table) return;
  const controls = box.querySelectorAll("[data-filter]");
  let shown = 0;
  const rows = Array.from(table.tBodies[0].rows);
  rows.forEach((row) => {
    let keep = true;
    controls.forEach((c) => {
      const want = c.value.trim().toLowerCase();
      if (!want) return;
      const have = (row.dataset[c.dataset.filter] || "").toLowerCase();
      if (c.tagName === "INPUT" ? !have.includes(want) : have !== want) keep = false;
    });
    row.hidden = !keep;
    if (keep) shown += 1;
  });
  const count = box.querySelector(".count");
  if (count) count.textContent = shown + " of " + rows.length + " rows";
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("table.sortable").forEach((table) => {
    table.querySelectorAll("thead th").forEach((th) => {
      th.tabIndex = 0;
      th.addEventListener("click", (e) => { if (e.target.tagName !== "A") sortBy(table, th); });
      th.addEventListener("keydown", (e) => { if (e.key === "Enter") sortBy(table, th); });
    });
  });
  document.querySelectorAll(".filters[data-filter-for]").forEach((box) => {
    box.querySelectorAll("[data-filter]").forEach((c) => c.addEventListener("input", () => applyFilters(box)));
    applyFilters(box);
  });
});
