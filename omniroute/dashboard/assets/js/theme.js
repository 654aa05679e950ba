// Applies the saved theme before the first paint (a classic script in <head>, so the
// page never flashes the other theme). "system" follows prefers-color-scheme.
(function () {
  var saved = null;
  try { saved = localStorage.getItem("omniroute.theme"); } catch (e) { saved = null; }
  if (saved === "light" || saved === "dark") {
    document.documentElement.setAttribute("data-theme", saved);
  }
})();
