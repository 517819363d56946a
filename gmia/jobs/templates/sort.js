// Sorts a table by the column whose heading was clicked: numbers by their exact value, text in
// alphabetical order, empty cells last; a second click reverses the order.
for (const table of document.querySelectorAll("table.sortable")) {
  const headings = Array.from(table.tHead.rows[0].cells);
  headings.forEach((heading, column) => {
    heading.querySelector("button").addEventListener("click", () => {
      const ascending = heading.getAttribute("aria-sort") !== "ascending";
      for (const other of headings) other.removeAttribute("aria-sort");
      heading.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      const body = table.tBodies[0];
      const rows = Array.from(body.rows);
      const keys = rows.map((row) => row.cells[column].dataset.sort);
      const numeric = keys.every((key) => key === "" || Number.isFinite(Number(key)));
      const order = rows.map((row, i) => i).sort((a, b) => {
        const x = keys[a], y = keys[b];
        if (x === "" || y === "") return (x === "") - (y === "");
        const difference = numeric ? Number(x) - Number(y) : x.localeCompare(y);
        return ascending ? difference : -difference;
      });
      for (const i of order) body.appendChild(rows[i]);
    });
  });
}
// A printed page shows the folded parts (the config) too.
window.addEventListener("beforeprint", () => {
  for (const details of document.querySelectorAll("details")) details.open = true;
});
