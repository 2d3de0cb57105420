// Live refresh: every element with data-refresh is replaced, every 2 s, by the same fragment
// rendered again on the server (escaped there, like the page).
(function () {
  const parts = document.querySelectorAll("[data-refresh]");
  if (!parts.length) return;
  setInterval(async () => {
    for (const part of parts) {
      try {
        const response = await fetch(part.dataset.refresh, { credentials: "same-origin" });
        if (response.ok) part.innerHTML = await response.text();
      } catch (error) { /* the next round tries again */ }
    }
  }, 2000);
})();
